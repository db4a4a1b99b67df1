"""Least privilege, checked: each function's DynamoDB, SQS and Secrets Manager
grants in template.yaml against the calls its code made under `make test`.

The integration tests give every function's code an SDK configuration that
goes through a recording proxy (tests/support/calls.rs); each call is noted
as `function<TAB>IAM action<TAB>resource name` in INGOT_SDK_CALLS/*.tsv.
Both directions fail the check:
- a call the function's policy does not grant (it would be AccessDenied on AWS);
- a grant no call used (remove it, or add the test that exercises it).
Grants Lambda itself uses for a function (the SQS event source mapping's
receive/delete/visibility/attributes on its queue) are not the code's calls.

Usage: python infra/check_iam.py template.yaml CALLS_DIR
"""

import glob
import os
import re
import sys

from samtranslator.yaml_helper import yaml_parse

SERVICES = ("dynamodb:", "sqs:", "secretsmanager:")
# What the SQS event source mapping does with a function's queue.
EVENT_SOURCE_ACTIONS = (
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
)
NAME_PROPERTIES = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SQS::Queue": "QueueName",
    "AWS::SecretsManager::Secret": "Name",
}


def logical_id(value):
    """The resource a policy's Resource (or an event's Queue) names."""
    if isinstance(value, dict):
        (function, argument), = value.items()
        if function == "Ref":
            return argument
        if function == "Fn::GetAtt":
            return (argument if isinstance(argument, list) else argument.split("."))[0]
        if function == "Fn::Sub":
            match = re.search(r"\$\{(\w+)(\.Arn)?\}", argument if isinstance(argument, str) else argument[0])
            return match.group(1) if match else None
    return None


def name_patterns(resources):
    """Logical id -> regex of the physical names the resource gets in any stack."""
    patterns = {}
    for rid, resource in resources.items():
        prop = NAME_PROPERTIES.get(resource.get("Type"))
        if not prop:
            continue
        name = resource["Properties"][prop]
        template = name["Fn::Sub"] if isinstance(name, dict) else name
        pattern = re.escape(template).replace(re.escape("${AWS::StackName}"), ".+")
        # Secrets may be named by ARN, which appends a random suffix.
        patterns[rid] = re.compile(rf"^(arn:.+:secret:)?{pattern}(-[A-Za-z0-9]{{6}})?$")
    return patterns


def statements(resources, function):
    props = resources[function]["Properties"]
    found = []
    for policy in props.get("Policies", []):
        if isinstance(policy, dict) and "Statement" in policy:
            found += policy["Statement"]
    role = logical_id(props.get("Role")) if props.get("Role") else None
    if role:
        for policy in resources[role]["Properties"].get("Policies", []):
            found += policy["PolicyDocument"]["Statement"]
    return found


def grants(resources, function):
    """(action, logical id) pairs the function's role allows for the three services."""
    granted = set()
    for statement in statements(resources, function):
        if statement.get("Effect") != "Allow":
            continue
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in actions:
            if action.startswith(SERVICES):
                for target in targets:
                    granted.add((action, logical_id(target) or str(target)))
    return granted


def platform_grants(resources, function):
    events = resources[function]["Properties"].get("Events", {}) or {}
    return {
        (action, logical_id(event["Properties"]["Queue"]))
        for event in events.values()
        if event.get("Type") == "SQS"
        for action in EVENT_SOURCE_ACTIONS
    }


def recorded(calls_dir, patterns):
    """Binary name -> set of (action, logical id), and the calls on other resources."""
    calls, unknown = {}, set()
    for path in glob.glob(os.path.join(calls_dir, "*.tsv")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                function, action, name = line.rstrip("\n").split("\t")
                rid = next((rid for rid, p in patterns.items() if p.match(name)), None)
                if rid is None:
                    unknown.add((function, action, name))
                else:
                    calls.setdefault(function, set()).add((action, rid))
    return calls, unknown


def main() -> int:
    path, calls_dir = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        resources = yaml_parse(f.read())["Resources"]
    functions = {
        r["Metadata"]["BuildProperties"]["Binary"]: rid
        for rid, r in resources.items()
        if r.get("Type") == "AWS::Serverless::Function"
    }
    calls, unknown = recorded(calls_dir, name_patterns(resources))
    if not calls:
        print(f"no calls recorded in {calls_dir}: run the integration tests with INGOT_SDK_CALLS set", file=sys.stderr)
        return 1
    failed = False
    # Tests that point a function at a missing table, queue or secret (to see
    # it fail cleanly) call resources the template does not have: not grants.
    for function, action, name in sorted(unknown):
        print(f"{function}: {action} on {name} (a test's stand-in, not a template resource)")
    for binary, rid in sorted(functions.items()):
        granted = grants(resources, rid)
        used = calls.get(binary, set())
        platform = platform_grants(resources, rid)
        for action, target in sorted(used - granted):
            print(f"{binary}: calls {action} on {target}, which its policy does not grant", file=sys.stderr)
            failed = True
        for action, target in sorted(granted - used - platform):
            print(f"{binary}: grants {action} on {target}, which no call used", file=sys.stderr)
            failed = True
        print(f"{binary}: {len(used)} action/resource pairs called, {len(granted)} granted ({len(granted & platform)} for its event source)")
    if failed:
        print("least privilege: template policies and calls differ (above)", file=sys.stderr)
        return 1
    print("least privilege: every grant is used and every call is granted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
