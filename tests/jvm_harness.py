"""The android-demo's platform-free Kotlin, compiled and run on this machine's JVM.

`android-demo/tools` pins JetBrains' Kotlin compiler (npm `kotlin-compiler`) and ONNX Runtime's Android AAR (npm
`com.github.asus4.onnxruntime`); Debian's `junit5` brings the JUnit console launcher (`.ci/run` installs all three).
The engine core, its desktop tools (`engine/src/tools`: the golden replay, which reads PNGs with javax.imageio) and its
tests are compiled once per source hash into `android-demo/build/jvm/<hash>/` (shared by the pytest-xdist workers
under a lock), then run by the console launcher with the Python side's fixtures. A missing
tool is a test failure naming the install command, never a skip: these tests are part of the suite.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

ANDROID = Path(__file__).resolve().parents[1] / "android-demo"
TOOLS = ANDROID / "tools" / "node_modules"
KOTLIN = TOOLS / "kotlin-compiler"
AAR = TOOLS / "com.github.asus4.onnxruntime" / "Plugins" / "Android" / "onnxruntime.aar"
JUNIT = Path("/usr/share/java/junit-platform-console-standalone.jar")
ENGINE_SRC = ANDROID / "engine" / "src" / "main" / "kotlin"
ENGINE_TOOLS = ANDROID / "engine" / "src" / "tools" / "kotlin"
ENGINE_TESTS = ANDROID / "engine" / "src" / "test" / "kotlin"
ORT_BACKEND_SRC = ANDROID / "backend-ort" / "src" / "main" / "kotlin"
APP_MODEL_SRC = ANDROID / "app" / "src" / "main" / "kotlin" / "dev" / "pocketvlm" / "demo" / "model"
# what the engine core and the app's model code must not import: Android's API, and the desktop's image decoding
ANDROID_ONLY = ("android.", "androidx.")
DESKTOP_ONLY = ("javax.imageio.", "java.awt.")
INSTALL = ("npm --prefix android-demo/tools ci && apt-get install -y junit5 (as .ci/run does)")


class ToolMissing(AssertionError):
    pass


def _need(path: Path) -> Path:
    if not path.exists():
        raise ToolMissing(f"{path} is missing: {INSTALL}")
    return path


def _sources(root: Path) -> list[Path]:
    return sorted(root.rglob("*.kt"))


def _digest(*roots: Path) -> str:
    h = hashlib.sha256()
    for root in roots:
        for path in _sources(root):
            h.update(str(path.relative_to(ANDROID)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def imports_of(root: Path, prefixes: tuple[str, ...]) -> list[str]:
    """``file:line: import ...`` for each import under ``root`` that starts with one of ``prefixes``."""
    found = []
    for path in _sources(root):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            words = line.split()
            if len(words) >= 2 and words[0] == "import" and words[1].startswith(prefixes):
                found.append(f"{path.relative_to(ANDROID)}:{number}: {line.strip()}")
    return found


def _refuse_imports(root: Path, prefixes: tuple[str, ...], why: str) -> None:
    found = imports_of(root, prefixes)
    if found:
        raise AssertionError(f"{root.relative_to(ANDROID)} {why}:\n" + "\n".join(found))


def kotlinc(classpath: list[Path], sources: list[Path], out: Path) -> None:
    """Compiles ``sources`` into the jar ``out``; a compile error fails with the compiler's messages."""
    compiler = _need(KOTLIN / "bin" / "kotlinc")
    command = [str(compiler), "-jvm-target", "17", "-nowarn", "-d", str(out)]
    if classpath:
        command += ["-cp", os.pathsep.join(str(p) for p in classpath)]
    done = subprocess.run(command + [str(s) for s in sources], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "JAVA_OPTS": "-Xss8m"})
    if done.returncode != 0:
        raise AssertionError(f"kotlinc failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def _locked_build(name: str, digest: str, build) -> Path:
    """``build(dir)`` once per digest into android-demo/build/jvm/<name>-<digest>/ (atomic: a finished directory)."""
    root = ANDROID / "build" / "jvm"
    root.mkdir(parents=True, exist_ok=True)
    done = root / f"{name}-{digest}"
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            staging = root / f".{name}-{digest}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            build(staging)
            staging.rename(done)
    return done


def kotlin_lib(name: str) -> Path:
    return _need(KOTLIN / "lib" / name)


@dataclass(frozen=True)
class EngineBuild:
    engine: Path  # engine core classes (jar): what the backends and the app depend on
    tests: Path  # the JVM tests (jar)
    tools: Path | None = None  # the desktop tools (jar: dev.pocketvlm.engine.cli), built on the core

    @property
    def runtime_classpath(self) -> list[Path]:
        tools = [self.tools] if self.tools else []
        return [self.engine, *tools, self.tests, kotlin_lib("kotlin-stdlib.jar"), kotlin_lib("kotlin-test.jar"),
                kotlin_lib("kotlin-test-junit5.jar")]


def engine_build() -> EngineBuild:
    """The engine core, its tools and its tests, compiled (cached per source hash). The core is compiled alone, so a
    use of the tools from it fails here; an Android or javax.imageio import in it is refused first."""
    _refuse_imports(ENGINE_SRC, ANDROID_ONLY + DESKTOP_ONLY, "imports what the Android engine core must not")

    def build(out: Path) -> None:
        kotlinc([], _sources(ENGINE_SRC), out / "engine.jar")
        kotlinc([out / "engine.jar"], _sources(ENGINE_TOOLS), out / "tools.jar")
        test_cp = [out / "engine.jar", out / "tools.jar", kotlin_lib("kotlin-test.jar"),
                   kotlin_lib("kotlin-test-junit5.jar"), _need(JUNIT)]
        kotlinc(test_cp, _sources(ENGINE_TESTS), out / "tests.jar")

    done = _locked_build("engine", _digest(ENGINE_SRC, ENGINE_TOOLS, ENGINE_TESTS), build)
    return EngineBuild(done / "engine.jar", done / "tests.jar", done / "tools.jar")


@dataclass(frozen=True)
class JUnitReport:
    passed: list[str]
    failed: dict[str, str]  # test -> message
    skipped: list[str]
    output: str


def run_junit(build: EngineBuild, fixtures: Path, reports: Path, select: str = "dev.pocketvlm.engine",
              timeout: int = 900) -> JUnitReport:
    """Runs the JVM tests (``select``: a package, or ``class:NAME``) with ``-Dpocketvlm.fixtures=fixtures``."""
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    selector = (["--select-class", select[6:]] if select.startswith("class:")
                else ["--scan-class-path", str(build.tests), "--include-package", select])
    command = ["java", "-Xss8m", f"-Dpocketvlm.fixtures={fixtures}", "-jar", str(_need(JUNIT)),
               "--class-path", os.pathsep.join(str(p) for p in build.runtime_classpath), *selector,
               "--reports-dir", str(reports), "--disable-banner", "--details=none"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    passed, failed, skipped = [], {}, []
    for xml in reports.glob("*.xml"):
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname')}.{case.get('name')}"
            failure = case.find("failure") if case.find("failure") is not None else case.find("error")
            if failure is not None:
                failed[name] = (failure.get("message") or failure.text or "")[:2000]
            elif case.find("skipped") is not None:
                skipped.append(name)
            else:
                passed.append(name)
    return JUnitReport(passed, failed, skipped, done.stdout + done.stderr)


def run_main(build: EngineBuild, main_class: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs one of the engine's command-line tools (e.g. the golden replay) on the JVM."""
    if build.tools is None:
        raise AssertionError("this build has no tools jar: use engine_build()")
    classpath = os.pathsep.join(str(p) for p in [build.engine, build.tools, kotlin_lib("kotlin-stdlib.jar")])
    return subprocess.run(["java", "-Xss8m", "-cp", classpath, main_class, *args], capture_output=True, text=True,
                          timeout=timeout)


def ort_classes() -> Path:
    """ONNX Runtime Android's Java API (`classes.jar` out of the AAR), for the ORT backend's compile check."""
    aar = _need(AAR)

    def build(out: Path) -> None:
        with zipfile.ZipFile(aar) as z:
            (out / "classes.jar").write_bytes(z.read("classes.jar"))

    digest = hashlib.sha256(aar.read_bytes()).hexdigest()[:16]
    return _locked_build("ort-aar", digest, build) / "classes.jar"


def compile_ort_backend() -> Path:
    """The ORT backend compiled against ONNX Runtime Android's classes and the engine core: type-checked only (the
    AAR's native libraries are Android's; nothing of it runs here)."""
    engine = engine_build().engine
    classes = ort_classes()

    def build(out: Path) -> None:
        kotlinc([engine, classes], _sources(ORT_BACKEND_SRC), out / "backend-ort.jar")

    return _locked_build("backend-ort", _digest(ENGINE_SRC, ORT_BACKEND_SRC), build) / "backend-ort.jar"


def compile_app_model() -> Path:
    """The app's platform-free model code (``app/src/main/kotlin/dev/pocketvlm/demo/model/*.kt``: the loaded bundle,
    the model thread, the benchmark runs) compiled against the engine core alone: type-checked only (the app's
    Android code cannot compile here). An ``android.*`` / ``androidx.*`` import in it is refused by name first."""
    _refuse_imports(APP_MODEL_SRC, ANDROID_ONLY, "must stay platform-free (the Android code is in platform/ and ui/)")
    engine = engine_build().engine
    sources = _sources(APP_MODEL_SRC)
    if not sources:
        raise AssertionError(f"no Kotlin sources under {APP_MODEL_SRC}")

    def build(out: Path) -> None:
        kotlinc([engine], sources, out / "app-model.jar")

    return _locked_build("app-model", _digest(ENGINE_SRC, APP_MODEL_SRC), build) / "app-model.jar"


FOUNDATION = ("Errors.kt", "Json.kt", "Tensor.kt", "Manifest.kt")


def check_subset(main_files: list[str], test_files: list[str], fixtures: Path, out: Path,
                 select: str = "dev.pocketvlm.engine") -> JUnitReport:
    """For work on one part of the engine while other parts are being written: the foundation files plus
    ``main_files`` (names under engine/src/main/kotlin/dev/pocketvlm/engine/) and ``test_files`` (under
    engine/src/test/...), compiled into ``out`` and run."""
    package = Path("dev") / "pocketvlm" / "engine"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    main = [ENGINE_SRC / package / name for name in dict.fromkeys([*FOUNDATION, *main_files])]
    kotlinc([], main, out / "engine.jar")
    tests = [ENGINE_TESTS / package / name for name in test_files]
    kotlinc([out / "engine.jar", kotlin_lib("kotlin-test.jar"), kotlin_lib("kotlin-test-junit5.jar"), _need(JUNIT)],
            tests, out / "tests.jar")
    return run_junit(EngineBuild(out / "engine.jar", out / "tests.jar"), fixtures, out / "reports", select)
