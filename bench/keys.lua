-- wrk script: cycles through pre-built requests, one per line of a keys file ("key inbox").
-- wrk -s bench/keys.lua URL -- KEYS_FILE PATH_SUFFIX [close]
-- With "close", every request asks for a new connection (Connection: close).
local reqs = {}
local i = 0

function init(args)
  local file, suffix = args[1], args[2] or "/small"
  local close = args[3] == "close"
  for line in io.lines(file) do
    local key, inbox = line:match("^(%S+) (%S+)")
    if key then
      local headers = { ["Host"] = "bench", ["Authorization"] = "Bearer " .. key }
      if close then
        headers["Connection"] = "close"
      end
      reqs[#reqs + 1] = wrk.format("GET", "/v0/inboxes/" .. inbox .. suffix, headers)
    end
  end
  -- Start each thread at a different place so threads do not walk in lockstep.
  i = math.random(#reqs) - 1
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
