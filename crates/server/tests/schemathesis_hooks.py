"""Hooks for the suite's schemathesis runs (loaded through SCHEMATHESIS_HOOKS by tests/tools.rs).

An Idempotency-Key names one request: the same key with another body is 422 IDEMPOTENCY_KEY_REUSED
(SPEC section 4), a rule between requests that no schema can state. Schemathesis draws keys from the
header's schema and draws the same short ones again and again, so each valid key it draws is swapped
for a fresh one, as a real client makes a new key for every new request. A key that breaks the
header's rules is left as drawn: the service must refuse it.
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}\Z")


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and VALID_KEY.match(str(headers[name])):
            headers[name] = uuid.uuid4().hex
