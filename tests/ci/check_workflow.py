"""Keeps the CI workflow and the README in step: every product command a workflow step runs
(comfy-build, comfyctl, minisign, cargo, bash scripts/...) must be one the README documents, with the
same subcommand and the same options (argument values such as paths may differ).

Usage: check_workflow.py WORKFLOW README. Exit 1 naming each command the README lacks. It also
checks itself: the same workflow with one option added to a command must be refused."""
import shlex
import sys

import yaml

PROGRAMS = {"comfy-build", "comfyctl", "minisign", "cargo", "bash"}
STOP = {">", ">>", "|", "||", "&&", ";", "2>&1"}


def shape(line):
    """(program, first positional argument, sorted options) of a command line, or None."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    cut = []
    for w in words:
        if w in STOP or w.startswith(">"):
            break
        cut.append(w)
    if not cut or cut[0].rsplit("/", 1)[-1] not in PROGRAMS:
        return None
    prog = cut[0].rsplit("/", 1)[-1]
    # minisign has no subcommands: every argument is an option's value.
    positional = "" if prog == "minisign" else next((w for w in cut[1:] if not w.startswith("-")), "")
    options = sorted({w.split("=", 1)[0] for w in cut[1:] if w.startswith("-")})
    return (prog, positional, tuple(options))


def workflow_commands(doc):
    out = []
    for job in (doc.get("jobs") or {}).values():
        for step in job.get("steps") or []:
            run = step.get("run")
            if not run:
                continue
            for line in run.replace("\\\n", " ").splitlines():
                s = shape(line.strip())
                if s:
                    out.append((line.strip(), s))
    return out


def readme_shapes(text):
    shapes = set()
    lang = None  # inside a fence: its language
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            lang = line[3:].strip() if lang is None else None
            continue
        if lang in ("sh", "bash", "console", ""):
            s = shape(line.strip())
            if s:
                shapes.add(s)
    return shapes


def missing(doc, readme):
    have = readme_shapes(readme)
    return [line for line, s in workflow_commands(doc) if s not in have]


def main():
    workflow, readme_path = sys.argv[1:3]
    with open(workflow) as f:
        doc = yaml.safe_load(f)
    with open(readme_path) as f:
        readme = f.read()
    cmds = workflow_commands(doc)
    if len(cmds) < 3:
        print(f"{workflow}: found only {len(cmds)} product commands; is this the release workflow?")
        return 1
    bad = missing(doc, readme)
    if bad:
        print(f"{workflow} runs commands {readme_path} does not document (same subcommand and options):")
        for line in bad:
            print(f"  {line}")
        print("document them in the README, or change the workflow to the documented ones")
        return 1
    # The check must be able to fail: an extra option on the build command is drift.
    for job in doc["jobs"].values():
        for step in job["steps"]:
            if "comfy-build build" in step.get("run", ""):
                step["run"] = step["run"].replace("comfy-build build", "comfy-build build --no-smoke", 1)
    if not missing(doc, readme):
        print("self-check failed: a changed build command went unnoticed")
        return 1
    print(f"{workflow}: {len(cmds)} commands, each documented in {readme_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
