"""The Dockerfile, checked statically (no Docker engine runs here): every path it copies exists and is not
excluded by .dockerignore; the build stage runs the README's commands (scripts/install-deps, swift build -c release
--product onestep-serve) with a Swift image of the toolchain the tests use; nothing names an architecture, so the
same file builds on amd64 and arm64; the run stage installs packages that provide every shared library the server
binary links (ldd of the local build, dpkg -S, apt-cache depends); the entry point's flags and every ONESTEP_*
variable it sets are ones `onestep-serve --help` lists; the port, health path and user agree with the server and
deploy/. Needs only the standard library; the dpkg/apt/ldd checks skip with the reason where those tools are absent.
"""
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import unittest

from serve import REPO, binary, read


def instructions():
    """(stage index, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, stage, pending = [], -1, ""
    for raw in read("Dockerfile").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage += 1
        out.append((stage, word, rest.strip()))
    return out


def dockerignore():
    path = os.path.join(REPO, ".dockerignore")
    if not os.path.exists(path):
        return []
    return [l.strip().lstrip("/") for l in read(".dockerignore").splitlines() if l.strip() and not l.startswith("#")]


class DockerfileTest(unittest.TestCase):
    def setUp(self):
        self.ins = instructions()
        self.args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for s, w, rest in self.ins if w == "ARG" and "=" in rest}
        self.stages = [rest for s, w, rest in self.ins if w == "FROM"]
        self.assertEqual(len(self.stages), 2, "a build stage and a run stage")

    def runs(self, stage):
        return [rest for s, w, rest in self.ins if w == "RUN" and s == stage]

    def test_every_copied_path_exists_and_is_sent(self):
        ignored = dockerignore()
        copies = [rest for s, w, rest in self.ins if w == "COPY"]
        self.assertGreater(len(copies), 3)
        for rest in copies:
            parts = shlex.split(rest)
            if any(p.startswith("--from") for p in parts):
                continue
            sources = [p for p in parts if not p.startswith("--")][:-1]
            for src in sources:
                path = os.path.join(REPO, src.rstrip("/"))
                self.assertTrue(os.path.exists(path), f"COPY {src}: no such path in the repository")
                top = src.strip("./").split("/")[0]
                for pattern in ignored:
                    self.assertFalse(fnmatch.fnmatch(top, pattern.rstrip("/")), f"COPY {src} is excluded by .dockerignore ({pattern})")
        # Every target folder the manifest names is copied (SwiftPM refuses a manifest whose folders are missing).
        manifest = read("Package.swift")
        copied = {shlex.split(r)[0].rstrip("/") for r in copies if "--from" not in r}
        for folder in set(re.findall(r'path: "([^"/]+)', manifest)) | {"Sources", "Tests"}:
            self.assertIn(folder, copied, f"Package.swift uses {folder}/, which the build stage does not copy")

    def test_build_stage_runs_the_readmes_commands(self):
        readme = read("README.md")
        serving = read("docs", "SERVING.md")
        build = " && ".join(self.runs(0))
        self.assertIn("scripts/install-deps", readme)
        self.assertIn("scripts/install-deps", build, "the build stage installs the libraries the README's way")
        self.assertIn("swift build -c release --product onestep-serve", serving)
        self.assertIn("swift build -c release --product onestep-serve", build)

    def test_swift_image_matches_the_toolchain(self):
        image = self.stages[0].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: self.args[m.group(1)], image)
        m = re.fullmatch(r"swift:(\d+\.\d+)(?:\.\d+)?-(\w+)", image)
        self.assertIsNotNone(m, f"build image {image} is not an official swift:X.Y-<debian> tag")
        run_image = self.stages[1].split()[0]
        self.assertEqual(run_image, f"debian:{m.group(2)}-slim", "build and run stages must share a Debian release (same shared libraries)")
        if shutil.which("swift"):
            version = subprocess.run(["swift", "--version"], capture_output=True, text=True).stdout + \
                subprocess.run(["swift", "--version"], capture_output=True, text=True).stderr
            local = re.search(r"Swift version (\d+\.\d+)", version)
            self.assertIsNotNone(local)
            self.assertEqual(m.group(1), local.group(1), "the image's Swift is the toolchain the tests run on")

    def test_nothing_names_an_architecture(self):
        text = read("Dockerfile").lower()
        code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
        for word in ["amd64", "x86_64", "x86-64", "arm64", "aarch64", "avx", "--platform", "march"]:
            self.assertNotIn(word, code, f"the Dockerfile's instructions name {word}: it would not build the same on amd64 and arm64")

    def runtime_packages(self):
        run = " ".join(self.runs(1))
        m = re.search(r"apt-get install ([^&]+)", run)
        self.assertIsNotNone(m)
        return {p for p in m.group(1).split() if not p.startswith("-")}

    @unittest.skipUnless(shutil.which("ldd") and shutil.which("dpkg") and shutil.which("apt-cache"), "needs ldd, dpkg and apt-cache")
    def test_run_stage_provides_every_linked_library(self):
        packages = self.runtime_packages()
        # In debian:*-slim already (Priority: required): the C and C++ runtimes and zlib.
        base = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}
        closure = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                                  "--no-breaks", "--no-replaces", "--no-enhances", *sorted(packages)],
                                 capture_output=True, text=True).stdout
        provided = packages | base | {l.split(":", 1)[1].strip().strip("<>") for l in closure.splitlines() if "Depends:" in l} | \
            {l.strip() for l in closure.splitlines() if l and not l.startswith(" ")}
        ldd = subprocess.run(["ldd", binary()], capture_output=True, text=True).stdout
        libs = [m.group(1) for m in re.finditer(r"=> (/\S+)", ldd) if "/swift" not in m.group(1)]
        self.assertTrue(any("openblas" in l for l in libs) and any("png" in l for l in libs), ldd)
        for lib in libs:
            owners = set()
            for candidate in {lib, os.path.realpath(lib)}:
                out = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True).stdout
                owners |= {l.split(":", 1)[0].strip() for l in out.splitlines() if ":" in l}
            self.assertTrue(owners, f"{lib}: no package owns it")
            self.assertTrue(owners & provided, f"{lib} (from {owners}) is not installed by the run stage ({sorted(packages)})")

    def test_entrypoint_env_port_health_and_user(self):
        entry = json.loads(next(rest for s, w, rest in self.ins if w == "ENTRYPOINT"))
        self.assertEqual(entry[0], "onestep-serve")
        copied = [rest for s, w, rest in self.ins if w == "COPY" and "--from=build" in rest]
        self.assertTrue(any(r.endswith("/usr/local/bin/onestep-serve") for r in copied))
        env = dict(re.findall(r"(ONESTEP_\w+)=(\S+)", " ".join(rest for s, w, rest in self.ins if w == "ENV")))
        expose = [rest for s, w, rest in self.ins if w == "EXPOSE"]
        self.assertEqual(expose, [env["ONESTEP_PORT"]])
        health = next(rest for s, w, rest in self.ins if w == "HEALTHCHECK")
        self.assertIn("/healthz", health)
        self.assertIn('"/healthz"', read("Sources", "OnestepServer", "Routes.swift"))
        user = next(rest for s, w, rest in self.ins if w == "USER" and s == 1)
        uid = re.search(r"--uid (\d+)", " ".join(self.runs(1))).group(1)
        self.assertNotEqual(uid, "0")
        self.assertEqual(user, "onestep")
        deployment = read("deploy", "deployment.yaml")
        self.assertIn(f"runAsUser: {uid}", deployment, "deploy/ runs as the image's user")
        try:
            help_text = subprocess.run([binary(), "--help"], capture_output=True, text=True, timeout=30)
        except RuntimeError as e:
            self.skipTest(str(e))
        text = help_text.stdout + help_text.stderr
        for flag in [a for a in entry[1:] if a.startswith("--")]:
            self.assertIn(flag, text, f"ENTRYPOINT flag {flag} is not one onestep-serve --help lists")
        for var in env:
            self.assertIn(var, text, f"ENV {var} is not one onestep-serve --help lists")


if __name__ == "__main__":
    unittest.main()
