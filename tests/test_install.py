"""The project installs itself into its own environment: `import sage_core` works from any folder
(notably notebooks/, where JupyterLab starts its kernels), and `make lab` opens JupyterLab on
notebooks/, as root too. Nothing here puts the checkout on sys.path: PYTHONPATH is dropped from
every child process, so only the installed (editable) project can make these imports work."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
MARK = "SAGE-INSTALL-CHECK "
PROBE = ("import json, os, sys, sage_core; print(" + repr(MARK) + " + json.dumps("
         "{'file': sage_core.__file__, 'root': str(sage_core.ROOT), 'cwd': os.getcwd(), "
         "'python': sys.executable}))")


def child_env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def probe_result(text):
    lines = [line for line in text.splitlines() if line.startswith(MARK)]
    assert lines, f"the probe printed nothing usable:\n{text}"
    return json.loads(lines[-1][len(MARK):])


def assert_this_checkout(found, cwd):
    assert Path(found["cwd"]).resolve() == cwd.resolve(), found
    assert Path(found["file"]).resolve() == ROOT / "sage_core.py", found
    assert Path(found["root"]).resolve() == ROOT, found


def test_kernel_in_notebooks_imports_sage_core():
    """A kernel started as JupyterLab starts one (KernelManager, the python3 kernelspec, cwd =
    notebooks/) imports this checkout's sage_core, and sage_core.ROOT is the repo root."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    kc = None
    try:
        km.start_kernel(cwd=str(NOTEBOOKS), env=child_env())
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        out, errors = [], []

        def hook(msg):
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                errors.append(re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(content["traceback"])))

        reply = kc.execute_interactive(PROBE, timeout=180, output_hook=hook)
        assert reply["content"]["status"] == "ok", "\n".join(errors) or reply["content"]
        found = probe_result("".join(out))
    finally:
        if kc is not None:
            kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert_this_checkout(found, NOTEBOOKS)


def test_python_outside_the_repo_imports_sage_core(tmp_path):
    """`python -c "import sage_core"` from a folder outside the repo imports this checkout's module."""
    assert ROOT not in tmp_path.resolve().parents
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_this_checkout(probe_result(proc.stdout), tmp_path)


def lab_command():
    env = child_env()
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    proc = subprocess.run(["make", "-n", "lab"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [shlex.split(line) for line in proc.stdout.splitlines() if "jupyter" in line]
    lines = [args for args in lines if "lab" in args]
    assert len(lines) == 1, proc.stdout
    return lines[0]


def test_make_lab_opens_notebooks():
    """`make lab` serves notebooks/ (its root directory), with --allow-root exactly when run as root."""
    args = lab_command()
    after_lab = args[args.index("lab") + 1:]
    roots = [a.split("=", 1)[1] for a in after_lab
             if a.startswith(("--ServerApp.root_dir=", "--notebook-dir=", "--ServerApp.notebook_dir="))]
    roots += [a for a in after_lab if not a.startswith("-")]
    assert len(roots) == 1, args
    assert (ROOT / roots[0]).resolve() == NOTEBOOKS, args
    assert ("--allow-root" in args) == (os.geteuid() == 0), args
