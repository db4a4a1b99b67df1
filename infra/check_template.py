"""Checks template.yaml the way CloudFormation will see it.

`sam validate --lint` and cfn-lint alone skip the SAM transform, so bad values
inside SAM resources (Runtime, InvokeMode, FunctionResponseTypes, ...) pass
unnoticed. This runs the transform offline with aws-sam-translator, then
cfn-lint on its output, and fails on any error.

Usage: python infra/check_template.py [template.yaml]
"""

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


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with open(path, encoding="utf-8") as f:
        template = yaml_parse(f.read())

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
