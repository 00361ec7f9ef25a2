"""Validates OCSF events (JSON lines on stdin) against the published OCSF JSON schema of the
version each event names in metadata.version, with the profiles it names in
metadata.profiles. Schemas come from PyPI `ocsf-json-schema` (the OCSF project's schema
export for each version), checked with `jsonschema` (draft 2020-12).

Prints one JSON object: {"events": N, "invalid": [{"line", "seq", "class_uid", "errors"}]}.
Exit code 0 when every event validates, 1 otherwise, 2 on unusable input.
"""
import json
import sys

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

schemas = {}


def schema_for(version, class_uid, profiles):
    key = (version, class_uid, tuple(sorted(profiles)))
    if key not in schemas:
        ocsf = OcsfJsonSchemaEmbedded(get_ocsf_schema(version))
        name = ocsf.lookup_class_name_from_uid(class_uid)
        schema = ocsf.get_class_schema(name, list(profiles))
        schemas[key] = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
    return schemas[key]


def main():
    events = 0
    invalid = []
    for n, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        events += 1
        try:
            ev = json.loads(line)
            meta = ev.get("metadata", {})
            validator = schema_for(meta["version"], ev["class_uid"], meta.get("profiles", []))
        except Exception as e:  # the event cannot even be looked up: invalid
            invalid.append({"line": n, "errors": [f"unusable event: {e!r}"]})
            continue
        errors = sorted(
            f"{'/'.join(str(p) for p in e.absolute_path) or '(event)'}: {e.message}"
            for e in validator.iter_errors(ev)
        )
        if errors:
            invalid.append({
                "line": n,
                "seq": meta.get("sequence"),
                "class_uid": ev.get("class_uid"),
                "errors": errors,
            })
    json.dump({"events": events, "invalid": invalid}, sys.stdout, indent=1)
    print()
    sys.exit(0 if events and not invalid else 1)


if __name__ == "__main__":
    main()
