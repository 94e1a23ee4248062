"""The public AgentMail Python SDK, unchanged, against the gateway's key-managed API.

Run by tests/sdk.rs with GATEWAY_URL, INBOX and KEY (an API key holding api_key_* but not
message_send). Exits non-zero with a message on the first broken expectation.
"""

import os
import sys

from agentmail import AgentMail
from agentmail.api_keys.types import ApiKeyPermissions, CreateBearerApiKeyRequest
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment

url, inbox, key = os.environ["GATEWAY_URL"], os.environ["INBOX"], os.environ["KEY"]
client = AgentMail(api_key=key, environment=AgentMailEnvironment(http=url, websockets="ws://127.0.0.1:1"))
keys = client.inboxes.api_keys


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


created = keys.create(
    inbox,
    request=CreateBearerApiKeyRequest(name="sdk", permissions=ApiKeyPermissions(message_read=True)),
)
check(created.name == "sdk", f"create returned {created!r}")
check(created.api_key.startswith("agk_"), "create returned the plaintext key")
check(created.permissions is not None and created.permissions.message_read is True, f"permissions {created.permissions!r}")

listed = keys.list(inbox, limit=100)
ids = [k.api_key_id for k in listed.api_keys]
check(created.api_key_id in ids, f"list holds the new key: {ids}")
check(listed.count == len(listed.api_keys), "count is the page size")

updated = keys.update(inbox, created.api_key_id, name="sdk-renamed")
check(updated.name == "sdk-renamed", f"update returned {updated!r}")
check(updated.updated_at is not None, "updated_at is set")

# Beyond the creator: refused.
try:
    keys.create(inbox, request=CreateBearerApiKeyRequest(name="x", permissions=ApiKeyPermissions(message_send=True)))
    check(False, "a key created a key wider than itself")
except ApiError as e:
    check(e.status_code == 403, f"exceeds_creator status {e.status_code}")

keys.delete(inbox, created.api_key_id)
after = [k.api_key_id for k in keys.list(inbox).api_keys]
check(created.api_key_id not in after, "delete removed the key")

# A proxied call that needs message_send, with a key that lacks it: refused by the gateway.
try:
    client.inboxes.messages.send(inbox, to="someone@example.com", subject="s", text="t")
    check(False, "send went through without message_send")
except ApiError as e:
    check(e.status_code == 403, f"send status {e.status_code}")
    check("message_send" in str(e.body), f"send body {e.body!r}")

print("sdk ok")
