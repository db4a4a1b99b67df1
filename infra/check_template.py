"""Checks template.yaml the way CloudFormation will see it.

`sam validate --lint` and cfn-lint alone skip the SAM transform, so bad values
inside SAM resources (Runtime, InvokeMode, FunctionResponseTypes, ...) pass
unnoticed. This runs the transform offline with aws-sam-translator, then
cfn-lint on its output, and fails on any error.

The template also uses AWS::LanguageExtensions, which CloudFormation applies
before the SAM transform; aws-sam-translator does not, so the one construct we
use it for (`Fn::If` in DeletionPolicy / UpdateReplacePolicy) is resolved here,
once per stage kind (prod and not prod), and both results are checked.

Usage: python infra/check_template.py [template.yaml]
"""

import copy

import json
import os
import subprocess
import sys
import tempfile

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    """The transform asks IAM for managed-policy ARNs; offline there are none."""

    def load(self):
        return {}


def condition(template, name, parameters):
    """Evaluates the template condition `name` (Fn::Equals / Fn::Not over
    Refs to parameters and literals: all this template uses)."""

    def value(node):
        if isinstance(node, dict) and set(node) == {"Ref"}:
            return parameters[node["Ref"]]
        return node

    def evaluate(node):
        (function, args), = node.items()
        if function == "Fn::Equals":
            return value(args[0]) == value(args[1])
        if function == "Fn::Not":
            return not evaluate(args[0])
        if function == "Condition":
            return evaluate(template["Conditions"][args])
        raise ValueError(f"condition function {function} is not handled here")

    return evaluate(template["Conditions"][name])


def language_extensions(template, stage):
    """The template as CloudFormation sees it after AWS::LanguageExtensions,
    for Stage=`stage`."""
    resolved = copy.deepcopy(template)
    parameters = {"Stage": stage, "AlarmEmail": ""}
    for resource in resolved["Resources"].values():
        for attribute in ("DeletionPolicy", "UpdateReplacePolicy"):
            policy = resource.get(attribute)
            if isinstance(policy, dict) and "Fn::If" in policy:
                name, if_true, if_false = policy["Fn::If"]
                resource[attribute] = if_true if condition(resolved, name, parameters) else if_false
    # A condition only DeletionPolicy used is gone with it (as after the real transform).
    for name in list(resolved.get("Conditions", {})):
        if json.dumps(resolved["Resources"]).count(f'"{name}"') == 0:
            del resolved["Conditions"][name]
    transforms = resolved["Transform"]
    resolved["Transform"] = [t for t in transforms if t != "AWS::LanguageExtensions"][0]
    return resolved


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with open(path, encoding="utf-8") as f:
        original = yaml_parse(f.read())

    failed = False
    for stage in ("prod", "dev"):
        template = language_extensions(original, stage)
        tables = {
            name: resource.get("DeletionPolicy")
            for name, resource in template["Resources"].items()
            if resource.get("Type") == "AWS::DynamoDB::Table"
        }
        expected = "Retain" if stage == "prod" else "Delete"
        wrong = {name: policy for name, policy in tables.items() if policy != expected}
        if wrong:
            print(f"Stage={stage}: tables must have DeletionPolicy {expected}: {wrong}", file=sys.stderr)
            failed = True
        print(f"Stage={stage}: {len(tables)} tables, DeletionPolicy {expected}")
        failed |= check(template) != 0
    return 1 if failed else 0


def check(template) -> int:
    # `sam build` rewrites CodeUri to an S3 location; stand one in.
    for resource in template["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://ingot-artifacts/placeholder.zip"

    transformed = transform(template, {}, NoManagedPolicies())
    print(f"SAM transform ok: {len(transformed['Resources'])} CloudFormation resources")

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "transformed.json")
        with open(out, "w", encoding="utf-8") as f:
            json.dump(transformed, f, indent=1)
        cfn_lint = os.path.join(os.path.dirname(sys.executable), "cfn-lint")
        result = subprocess.run(
            [cfn_lint, "--format", "parseable", out], capture_output=True, text=True
        )
    print(result.stdout, end="")
    print(result.stderr, end="", file=sys.stderr)
    # cfn-lint's exit code is a bitmask: 2 = error, 4 = warning, 8 = informational;
    # anything else (1, a crash) is a failure too.
    if result.returncode & ~(4 | 8):
        print("cfn-lint found errors in the transformed template", file=sys.stderr)
        return 1
    print("cfn-lint: no errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
