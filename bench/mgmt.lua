-- wrk script for the management API: GET (list) or POST (create) with a management token.
-- wrk -s bench/mgmt.lua URL -- TOKEN METHOD PATH
local req

function init(args)
  local token, method, path = args[1], args[2], args[3]
  local headers = { ["Host"] = "bench", ["Authorization"] = "Bearer " .. token }
  local body = nil
  if method == "POST" then
    headers["Content-Type"] = "application/json"
    body = '{"name":"bench"}'
  end
  req = wrk.format(method, path, headers, body)
end

function request()
  return req
end
