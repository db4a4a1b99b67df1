"""`make fuzz`: schemathesis against a running `make dev`, from docs/openapi.yaml.

Creates what the fuzzer needs to get past authentication (a tenant and its API
key through the admin API; the admin token, and the sign-in token `make dev`
wrote for its own user, fuzz-user, so dev-user's rate limits stay untouched), then runs schemathesis once per function with a bounded
number of examples per operation. It fails on any 5xx, any response that
does not match the spec (status, content type, headers, body), or any
ERROR logged by the functions while it ran. Figures go to docs/reliability.md.

Usage (with `make dev` running): python infra/fuzz.py
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = os.path.join(ROOT, os.environ.get("INGOT_STATE_DIR", ".local"))
BASE = f"http://127.0.0.1:{os.environ.get('INGOT_LAMBDA_PORT', '9000')}/lambda-url"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
SEED = os.environ.get("FUZZ_SEED", "1")
FUNCTIONS = ["prices", "ingest", "usage", "chat-stream"]
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)
# Negative inputs (malformed bodies, out-of-range parameters) come from the
# coverage phase. The stateful and fuzzing phases generate valid data only:
# their negative mode sends raw non-UTF-8 JSON bodies, which cargo-lambda
# (not Lambda: API Gateway would base64 them) answers with its own 500
# before any function runs.
PASSES = [("examples,coverage", "all"), ("stateful,fuzzing", "positive")]
# Logged at ERROR by the scheduled price fetch when providers are unreachable
# (no network in the sandbox): not caused by the fuzzer.
UNRELATED_ERRORS = ("every provider failed", "AllProvidersFailed")


def http(method, url, token=None, body=None):
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, data, timeout=30) as response:
        return json.loads(response.read() or b"null")


def admin_token():
    log = open(os.path.join(STATE, "dev.log"), encoding="utf-8").read()
    found = re.findall(r"secret\s+\S+/admin-token = (\S+)", log)
    if not found:
        sys.exit("no admin token in the make dev log: is make dev running?")
    return found[-1]


def main():
    try:
        http("GET", f"{BASE}/usage/health")
    except OSError as e:
        sys.exit(f"make dev is not answering at {BASE} ({e}); start it first")
    admin = admin_token()
    user = open(os.path.join(STATE, "fuzz-token"), encoding="utf-8").read().strip()
    tenant = http(
        "POST",
        f"{BASE}/usage/admin/tenants",
        admin,
        {"name": "fuzz", "monthly_quota": 10_000_000, "billing_day": 1, "tier": "pro"},
    )
    log_path = os.path.join(STATE, "dev.log")
    log_start = os.path.getsize(log_path)

    results = []
    failed = False
    # schemathesis (hypothesis) writes its database into the working
    # directory: run it elsewhere, or `cargo lambda watch` sees a change and
    # restarts the functions mid-run.
    with tempfile.TemporaryDirectory() as work:
        config = os.path.join(work, "schemathesis.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(
                f'[auth.openapi.tenantKey]\nbearer = "{tenant["api_key"]}"\n'
                f'[auth.openapi.adminToken]\nbearer = "{admin}"\n'
                f'[auth.openapi.userJwt]\nbearer = "{user}"\n'
            )
        for function in FUNCTIONS:
            summary = {"function": function, "operations": 0, "requests": 0, "failures": 0}
            started = time.monotonic()
            for phases, mode in PASSES:
                run = subprocess.run(
                    [
                        os.path.join(os.path.dirname(sys.executable), "schemathesis"),
                        "--config-file", config,
                        "run", os.path.join(ROOT, "docs/openapi.yaml"),
                        "--url", f"{BASE}/{function}",
                        "--include-tag", function,
                        "--checks", CHECKS,
                        "--phases", phases,
                        "--mode", mode,
                        "--max-examples", str(EXAMPLES),
                        "--seed", SEED,
                        "--request-timeout", "30",
                        "--generation-codec", "utf-8",
                    ],
                    cwd=work,
                    capture_output=True,
                    text=True,
                )
                found = summarise(run.stdout)
                summary["operations"] = max(summary["operations"], found["operations"])
                summary["requests"] += found["requests"]
                summary["failures"] += found["failures"]
                if run.returncode != 0:
                    failed = True
                    print(run.stdout[-20000:])
                    print(run.stderr[-5000:], file=sys.stderr)
                print(
                    f"{function} ({phases}, {mode}): {found['operations']} operations, "
                    f"{found['requests']} test cases, {found['failures']} failures (exit {run.returncode})"
                )
            summary["seconds"] = time.monotonic() - started
            results.append(summary)

    with open(log_path, encoding="utf-8") as f:
        f.seek(log_start)
        errors = [
            line.rstrip()
            for line in f
            if '"level":"ERROR"' in line and not any(u in line for u in UNRELATED_ERRORS)
        ]
    for line in errors[:20]:
        print(f"logged: {line}")
    failed |= bool(errors)
    write_figures(results, len(errors))
    return 1 if failed else 0


def summarise(output):
    """Operations tested, test cases generated and unique failures, from
    schemathesis' summary."""

    def number(pattern):
        found = re.search(pattern, output)
        return int(found.group(1)) if found else 0

    return {
        "operations": number(r"Tested: (\d+)"),
        "requests": number(r"(\d+) generated"),
        "failures": number(r"(\d+) unique failures?"),
    }


def write_figures(results, logged_errors):
    rows = "\n".join(
        f"| {r['function']} | {r['operations']} | {r['requests']} | {r['failures']} | {r['seconds']:.0f} s |"
        for r in results
    )
    total = sum(r["requests"] for r in results)
    body = (
        f"`make fuzz` on {time.strftime('%Y-%m-%d')}: schemathesis against `make dev`, "
        f"{EXAMPLES} examples per operation per phase, seed {SEED}; passes "
        + "; ".join(f"{p} ({m} data)" for p, m in PASSES)
        + f"; checks {CHECKS.replace(',', ', ')}.\n\n"
        "| function | operations | test cases | failures | time |\n|---|---:|---:|---:|---:|\n"
        f"{rows}\n\n{total} test cases in all (stateful sequences send several requests each); "
        f"{logged_errors} errors logged by the functions.\n"
    )
    path = os.path.join(ROOT, "docs/reliability.md")
    doc = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Reliability\n"
    begin, end = "<!-- BEGIN fuzz -->", "<!-- END fuzz -->"
    section = f"{begin}\n{body}{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + section + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + section + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)
    print(body)


if __name__ == "__main__":
    sys.exit(main())
