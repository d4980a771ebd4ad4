"""kilosort_docker.mex: mexcuda's commands, the Makefile, real compiles, the manifest.

Golden tests check the R2022b command lines flag by flag against ``mexcuda -v`` output of
MATLAB R2022b with CUDA 11.2. The compile tests
run the machine's nvcc (CUDA 13 here: targets sm_75, sm_80, sm_90 + PTX) on sources written
for the test (``tests/standins/cuda-sources``) against a stand-in mex API
(``tests/standins/mexapi``, not MathWorks code); they skip, saying why, without nvcc,
cuobjdump or make.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipapp
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from kilosort_docker import atomic, mex
from kilosort_docker.atomic import replace_folder
from kilosort_docker.errors import UserError
from kilosort_docker.images.profiles import get_profile
from kilosort_docker.mex.manifest import source_path
from tests.support import make_matlab_root

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "standins" / "cuda-sources"

CUDA_ROOT = os.environ.get("CUDA_ROOT", "/usr/local/cuda")
NVCC = mex.find_tool("nvcc", CUDA_ROOT)
CUOBJDUMP = mex.find_tool("cuobjdump", CUDA_ROOT)
TEST_GENCODE = ("compute_75,sm_75", "compute_80,sm_80", "compute_90,sm_90", "compute_90,compute_90")


def _why_no_compile() -> str | None:
    if not NVCC:
        return f"nvcc not found in {CUDA_ROOT}/bin or PATH (set CUDA_ROOT)"
    if not CUOBJDUMP:
        return "cuobjdump not found (CUDA toolkit, or pip install nvidia-cuda-cuobjdump)"
    if not shutil.which("make"):
        return "make not found"
    if not (shutil.which("g++") and shutil.which("cc")):
        return "no host C/C++ compiler (g++, cc)"
    return None


needs_nvcc = pytest.mark.skipif(_why_no_compile() is not None, reason=str(_why_no_compile()))


def _nvcc_cuda_version() -> str:
    return re.search(r"release (\d+\.\d+)", mex.nvcc_version(NVCC))[1]


# --------------------------------------------------------------------------------------------
# Golden: R2022b command lines, flag by flag against `mexcuda -v` (R2022b, CUDA 11.2)
# --------------------------------------------------------------------------------------------

ML = "/opt/matlab/R2022b"
CU = "/usr/local/cuda-11.2"
MEXCUDA_DEFINES = [
    "-DMX_COMPAT_64",
    "-DMATLAB_DEFAULT_RELEASE=R2017b",
    "-DUSE_MEX_CMD",
    "--compiler-options=-D_GNU_SOURCE,-DMATLAB_MEX_FILE",
]
MEXCUDA_INCLUDES = [
    f"-I{ML}/extern/include",
    f"-I{ML}/simulink/include",
    f"-I{ML}/toolbox/parallel/gpu/extern/include/",
    f"-I{CU}/include",
]
MEXCUDA_GENCODE = [
    "-gencode=arch=compute_35,code=sm_35",
    "-gencode=arch=compute_50,code=sm_50",
    "-gencode=arch=compute_60,code=sm_60",
    "-gencode=arch=compute_70,code=sm_70",
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_80,code=compute_80",
]
MEXCUDA_HOST = [
    "--compiler-options=-fexceptions,-fPIC,-fno-omit-frame-pointer,-pthread,-fwrapv",
    "-std=c++11",
    "-O2",
    "-DNDEBUG",
]
MEXCUDA_LIBS = [
    f"-L{CU}/lib64",
    f"-L{ML}/bin/glnxa64",
    f"-L{ML}/extern/bin/glnxa64",
    "-lMatlabDataArray",
    "-lmx",
    "-lmex",
    "-lmat",
    "-lm",
    "-lc",
    "-lstdc++",
    "-lmwgpu",
]


@pytest.fixture(scope="module")
def r2022b_plan() -> mex.MexPlan:
    chain = mex.toolchain_from_profile(get_profile("r2022b"))
    return mex.MexPlan(chain, mex.get_spec("3.0.2"), "/ks/CUDA", "c43f524")


def _steps(plan: mex.MexPlan, name: str) -> dict[str, list[str]]:
    variables = plan.variables(out_dir="out", obj_dir="obj")
    steps = mex.mex_steps(plan.toolchain, plan.spec.source(name))
    return {s.kind: [mex.expand(a, variables) for a in s.argv] for s in steps}


def test_r2022b_nvcc_command_matches_facts(r2022b_plan):
    steps = _steps(r2022b_plan, "spikedetector3")
    assert steps["compile"] == [
        f"{CU}/bin/nvcc", "-c", "-ccbin", "g++-10",
        *MEXCUDA_DEFINES, *MEXCUDA_INCLUDES, *MEXCUDA_GENCODE, *MEXCUDA_HOST,
        "/ks/CUDA/spikedetector3.cu", "-o", "obj/spikedetector3/spikedetector3.o",
    ]  # fmt: skip
    assert "dlink" not in steps


def test_r2022b_version_file_and_link_match_facts(r2022b_plan):
    steps = _steps(r2022b_plan, "mexWtW2")
    assert steps["compile-version"] == [
        f"{CU}/bin/nvcc", "-c", "-ccbin", "g++-10", *MEXCUDA_DEFINES, *MEXCUDA_INCLUDES,
        *MEXCUDA_HOST, "-DMATLAB_MEXCMD_RELEASE=R2017b", f"{ML}/extern/version/c_mexapi_version.c",
        "-o", "obj/mexWtW2/c_mexapi_version.o",
    ]  # fmt: skip
    assert steps["link"] == [
        "g++-10", "-pthread", "-Wl,--no-undefined", "-shared", "-O",
        f"-Wl,--version-script,{ML}/extern/lib/glnxa64/c_exportsmexfileversion.map",
        "obj/mexWtW2/mexWtW2.o", "obj/mexWtW2/c_mexapi_version.o",
        *MEXCUDA_LIBS, f"{CU}/lib64/libcudart.so.*", "-o", "out/mexWtW2.mexa64",
    ]  # fmt: skip


def test_r2022b_mexmpnu8_is_relocatable_and_device_linked(r2022b_plan):
    steps = _steps(r2022b_plan, "mexMPnu8")
    compile_ = steps["compile"]
    assert compile_[:4] == [f"{CU}/bin/nvcc", "-dc", "-ccbin", "g++-10"]
    assert compile_[4:] == [
        "-DENABLE_STABLEMODE", *MEXCUDA_DEFINES, *MEXCUDA_INCLUDES, *MEXCUDA_GENCODE, *MEXCUDA_HOST,
        "/ks/CUDA/mexMPnu8.cu", "-o", "obj/mexMPnu8/mexMPnu8.o",
    ]  # fmt: skip
    assert steps["dlink"] == [
        f"{CU}/bin/nvcc", "-dlink", "-ccbin", "g++-10", *MEXCUDA_GENCODE,
        "--compiler-options=-fPIC", "obj/mexMPnu8/mexMPnu8.o", f"-L{CU}/lib64", "-lcudadevrt",
        "-o", "obj/mexMPnu8/mexMPnu8_dlink.o",
    ]  # fmt: skip
    link = steps["link"]
    assert link[6:9] == [
        "obj/mexMPnu8/mexMPnu8.o",
        "obj/mexMPnu8/mexMPnu8_dlink.o",
        "obj/mexMPnu8/c_mexapi_version.o",
    ]
    assert link[9:] == [*MEXCUDA_LIBS, "-lcudadevrt", f"{CU}/lib64/libcudart.so.*", "-o",
                        "out/mexMPnu8.mexa64"]  # fmt: skip


def test_r2022b_gpu_example_gets_mx_compat_64_as_mexcuda_does(r2022b_plan):
    # mexcuda passes -DMX_COMPAT_64 even without -largeArrayDims (`mexcuda -v mexGPUExample.cu`):
    # the example's compile carries exactly the defines of the Kilosort sources.
    example = r2022b_plan.spec.source("mexGPUExample")
    assert not example.large_array_dims
    steps = _steps(r2022b_plan, "mexGPUExample")
    src = f"{ML}/toolbox/parallel/gpu/extern/src/mex/mexGPUExample.cu"
    assert steps["compile"] == [
        f"{CU}/bin/nvcc", "-c", "-ccbin", "g++-10",
        *MEXCUDA_DEFINES, *MEXCUDA_INCLUDES, *MEXCUDA_GENCODE, *MEXCUDA_HOST,
        src, "-o", "obj/mexGPUExample/mexGPUExample.o",
    ]  # fmt: skip
    assert steps["compile-version"][4:8] == MEXCUDA_DEFINES


def test_kilosort3_spec_matches_mexgpuall():
    spec = mex.get_spec("v3.0.2")
    by_name = {s.name: s for s in spec.sources}
    assert [s.name for s in spec.sources if not s.diagnostic] == [
        "spikedetector3", "spikedetector3PC", "mexThSpkPC", "mexGetSpikes2", "mexSVDsmall2",
        "mexWtW2", "mexFilterPCs", "mexClustering2", "mexDistances2", "mexMPnu8",
    ]  # fmt: skip
    plain = [s for s in spec.sources if not s.diagnostic and not s.dynamic]
    assert len(plain) == 9
    assert all(s.large_array_dims and not s.defines and s.source == f"{s.name}.cu" for s in plain)
    mp = by_name["mexMPnu8"]
    assert (mp.dynamic, mp.large_array_dims, mp.defines) == (True, True, ("ENABLE_STABLEMODE",))
    assert mp.includes == ("mexNvidia_quicksort.cu",)  # #include'd, not a mex of its own
    assert "mexNvidia_quicksort" not in by_name
    example = by_name["mexGPUExample"]
    assert example.diagnostic and example.root == "MATLAB_ROOT"
    assert example.source == "toolbox/parallel/gpu/extern/src/mex/mexGPUExample.cu"
    assert mex.get_spec("3.0.2", diagnostic=False).sources == spec.sources[:-1]


def test_kilosort25_spec_lacks_spikedetector3pc():
    ks3 = [s.name for s in mex.get_spec("3.0.2", diagnostic=False).sources]
    ks25 = [s.name for s in mex.get_spec("2.5", diagnostic=False).sources]
    assert ks25 == [n for n in ks3 if n != "spikedetector3PC"]


def test_ensure_determ_option_and_its_requirement():
    mp = mex.get_spec("3.0.2", ensure_determ=True).source("mexMPnu8")
    assert mp.defines == ("ENABLE_STABLEMODE", "ENSURE_DETERM")
    with pytest.raises(UserError, match="ENSURE_DETERM requires ENABLE_STABLEMODE"):
        mex.MexSource("mexMPnu8", "mexMPnu8.cu", defines=("ENSURE_DETERM",), dynamic=True)


def test_unknown_kilosort_version_is_refused():
    with pytest.raises(UserError, match="no mex spec for Kilosort '9.9'.*3.0.2"):
        mex.get_spec("9.9")


# --------------------------------------------------------------------------------------------
# Gencode validation
# --------------------------------------------------------------------------------------------


def test_r2022b_refuses_sm90_with_the_toolkits_limits():
    with pytest.raises(UserError) as err:
        mex.toolchain_from_profile(get_profile("r2022b"), ["compute_90,sm_90"])
    assert str(err.value) == (
        "CUDA 11.2 cannot target sm_90 (supports sm_35..sm_86): drop it or use a profile "
        "with CUDA >= 11.8"
    )


@pytest.mark.parametrize(
    ("cuda", "target", "message"),
    [
        ("12.2", "compute_35,sm_35", "CUDA 12.2 cannot target sm_35 (supports sm_50..sm_90): "
                                     "drop it or use a profile with CUDA 11.x"),
        ("13.0", "compute_70,sm_70", "CUDA 13.0 cannot target sm_70 (supports sm_75..sm_121): "
                                     "drop it or use a profile with CUDA 12.x"),
        ("11.0", "compute_86,sm_86", "CUDA 11.0 cannot target sm_86 (supports sm_35..sm_80): "
                                     "drop it or use a profile with CUDA >= 11.1"),
        ("11.2", "compute_90,compute_90", "CUDA 11.2 cannot target compute_90 (PTX)"),
        ("11.8", "compute_90,sm_80", "virtual architecture compute_90 does not fit sm_80"),
        ("11.8", "compute_90a,sm_90a", "'a'-suffixed targets need CUDA >= 12.0"),
        ("11.8", "sm80", "bad gencode"),
    ],
)  # fmt: skip
def test_unsupported_targets_are_refused(cuda, target, message):
    with pytest.raises(UserError, match=re.escape(message)):
        mex.validate_gencode(cuda, [target])


@pytest.mark.parametrize(
    ("cuda", "targets"),
    [
        ("11.2", TEST_GENCODE[:2] + ("compute_86,sm_86", "compute_35,sm_35")),
        ("11.8", ("compute_89,sm_89", "compute_90,sm_90", "compute_90,compute_90")),
        ("12.2", ("compute_50,sm_50", "compute_90a,sm_90a")),
        ("13.0", TEST_GENCODE),
    ],
)
def test_supported_targets_pass(cuda, targets):
    assert [str(t) for t in mex.validate_gencode(cuda, targets)] == list(targets)


# --------------------------------------------------------------------------------------------
# Host compiler: the newest gcc each toolkit's crt/host_config.h accepts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cuda", "compiler", "newest"),
    [("11.0", "g++-10", 9), ("11.2", "g++-11", 10), ("11.2", "gcc-12", 10),
     ("12.2", "g++-13", 12), ("11.2", "/usr/bin/g++-12", 10)],
)  # fmt: skip
def test_host_compiler_newer_than_the_toolkit_is_refused(cuda, compiler, newest):
    with pytest.raises(UserError) as err:
        mex.validate_host_compiler(cuda, compiler)
    assert str(err.value) == (
        f"CUDA {cuda} accepts gcc up to {newest}, not {compiler} (nvcc stops with "
        f"'unsupported GNU version'): use --host-compiler g++-{newest} or older"
    )


@pytest.mark.parametrize(
    ("cuda", "compiler"),
    [("11.0", "g++-9"), ("11.2", "g++-10"), ("11.2", "g++-8"), ("12.2", "gcc-12"),
     ("11.2", "g++"), ("11.2", "clang++-18"), ("11.4", "g++-14")],
)  # fmt: skip
def test_host_compiler_in_range_or_not_judged_passes(cuda, compiler):
    # A bare g++ (or another compiler) cannot be judged without running it; 11.4 is not in
    # the table (11.4.0 and 11.4.1 differ).
    assert mex.validate_host_compiler(cuda, compiler) == compiler


def test_every_profile_compiler_passes_and_toolchain_checks_the_override():
    for name in ("r2021a", "r2022b", "r2024a"):
        profile = get_profile(name)
        assert mex.toolchain_from_profile(profile).host_compiler == profile.host_compiler
    assert mex.newest_gcc("11.2") == 10 and mex.newest_gcc("11.4") is None
    with pytest.raises(UserError, match=r"CUDA 11\.2 accepts gcc up to 10, not g\+\+-12"):
        mex.toolchain_from_profile(get_profile("r2022b"), host_compiler="g++-12")
    chain = mex.toolchain_from_profile(get_profile("r2022b"))
    with pytest.raises(UserError, match="accepts gcc up to 10"):
        replace(chain, host_compiler="g++-11").validated()


@needs_nvcc
def test_host_compiler_table_matches_the_installed_nvcc():
    header = Path(NVCC).resolve().parent.parent / "include" / "crt" / "host_config.h"
    newest = mex.newest_gcc(_nvcc_cuda_version())
    if newest is None or not header.is_file():
        pytest.skip(f"CUDA {_nvcc_cuda_version()} not in the table, or no {header}")
    limit = re.search(r"#if __GNUC__ > (\d+)", header.read_text())
    assert limit and int(limit[1]) == newest


@needs_nvcc
def test_toolkit_table_matches_the_installed_nvcc():
    listed = subprocess.run([NVCC, "--list-gpu-code"], capture_output=True, text=True).stdout
    numbers = sorted({int(re.sub(r"[a-z]$", "", c[3:])) for c in listed.split()})
    assert list(mex.supported_architectures(_nvcc_cuda_version())) == numbers


# --------------------------------------------------------------------------------------------
# Parsing and prediction
# --------------------------------------------------------------------------------------------

CUOBJDUMP_SAMPLE = """\
ELF file    1: mexWtW2.1.sm_35.cubin
ELF file    2: mexWtW2.2.sm_50.cubin
ELF file    3: mexWtW2.3.sm_80.cubin
PTX file    1: mexWtW2.1.sm_80.ptx
ELF file    4: mexWtW2.4.sm_80.cubin
"""


def test_parse_cuobjdump():
    assert mex.parse_cuobjdump(CUOBJDUMP_SAMPLE) == (("sm_35", "sm_50", "sm_80"), ("compute_80",))
    assert mex.parse_cuobjdump("") == ((), ())


def test_parse_glibcxx():
    text = (
        "  0x0010:   Name: GLIBCXX_3.4.9  Flags: none  Version: 4\n"
        "  0x0020:   Name: GLIBCXX_3.4.21  Flags: none  Version: 3\n"
        "  0x0030:   Name: GLIBC_2.2.5  Flags: none  Version: 2\n"
        "  0x0040:   Name: GLIBCXX_3.4  Flags: none  Version: 5\n"
    )
    assert mex.parse_glibcxx(text) == ("GLIBCXX_3.4", "GLIBCXX_3.4.9", "GLIBCXX_3.4.21")


R2022B_SASS = ("sm_35", "sm_50", "sm_60", "sm_70", "sm_80")


@pytest.mark.parametrize(
    ("sass", "ptx", "cc", "mode", "via"),
    [
        (R2022B_SASS, ("compute_80",), "9.0", "ptx-jit", "compute_80"),  # H100/H200
        (R2022B_SASS, ("compute_80",), "8.6", "native", "sm_80"),  # RTX 30xx
        (R2022B_SASS, ("compute_80",), "8.0", "native", "sm_80"),  # A100
        (R2022B_SASS, ("compute_80",), "7.5", "native", "sm_70"),  # T4 runs sm_70 SASS
        (R2022B_SASS, ("compute_80",), "3.0", "none", ""),
        (R2022B_SASS, (), "9.0", "none", ""),  # relocatable mexMPnu8 on an H200
        (("sm_80",), ("compute_80",), "12.0", "ptx-jit", "compute_80"),
        (("sm_90a",), (), "9.0", "native", "sm_90a"),
        (("sm_90a",), ("compute_90a",), "10.0", "none", ""),
        (("sm_86",), (), "8.0", "none", ""),
        (("sm_75", "sm_80"), ("compute_90",), "sm_89", "native", "sm_80"),
    ],
)
def test_predict_runtime(sass, ptx, cc, mode, via):
    prediction = mex.predict_runtime(sass, ptx, cc, binary="x")
    assert (prediction.mode, prediction.via) == (mode, via)
    assert prediction.runs == (mode != "none")


def test_device_code_mismatch_rules():
    chain = mex.Toolchain(
        "p", "/m", "/c", "13.0", "g++", ("sm_80", "compute_90,sm_90", "compute_90")
    )
    plain = mex.MexSource("a", "a.cu")
    dynamic = mex.MexSource("b", "b.cu", dynamic=True)
    full = (("sm_80", "sm_90"), ("compute_90",))
    assert mex.device_code_mismatch(chain, plain, *full) is None
    assert mex.device_code_mismatch(chain, dynamic, *full) is None  # a toolkit keeping PTX
    assert mex.device_code_mismatch(chain, dynamic, ("sm_80", "sm_90"), ()) is None
    assert "asks for SASS ['sm_80', 'sm_90'] and PTX ['compute_90']" in (
        mex.device_code_mismatch(chain, plain, ("sm_80", "sm_90"), ())
    )
    assert mex.device_code_mismatch(chain, dynamic, ("sm_80",), ()) is not None


def test_bad_compute_capability():
    with pytest.raises(UserError, match="bad compute capability"):
        mex.predict_runtime((), (), "nine")


def test_first_error_names_file_and_message():
    nvcc = 'foo/broken.cu(7): error: expected a ";"\n1 error detected\nmake: *** [M:3: o] Error 2'
    assert mex.first_error(nvcc) == 'foo/broken.cu:7: expected a ";"'
    gcc = "x.c:3:5: error: unknown type name 'nope'\n"
    assert mex.first_error(gcc) == "x.c:3: unknown type name 'nope'"
    missing = "make: *** No rule to make target 'src/gone.cu', needed by 'o/gone.o'.  Stop.\n"
    assert mex.first_error(missing).startswith("src/gone.cu: no rule")


# --------------------------------------------------------------------------------------------
# Plan, Makefile, command line
# --------------------------------------------------------------------------------------------


def test_plan_and_spec_round_trip(r2022b_plan):
    assert mex.MexPlan.from_json(r2022b_plan.to_json()) == r2022b_plan
    spec = mex.MexSpec.from_dict(json.loads((SOURCES / "spec.json").read_text()))
    assert mex.MexSpec.from_dict(spec.to_dict()) == spec
    assert spec.source("mexTree").dynamic and spec.source("mexTree").includes == ("treeHelper.cu",)


def test_makefile_variables_default_to_the_profile(r2022b_plan):
    text = mex.render_makefile(r2022b_plan, out_dir="mex-out")
    for line in (f"MATLAB_ROOT = {ML}", f"CUDA_ROOT = {CU}", "SRC_DIR = /ks/CUDA",
                 "OUT_DIR = mex-out", "HOST_CXX = g++-10", "NVCC = $(CUDA_ROOT)/bin/nvcc",
                 ".DELETE_ON_ERROR:", "MAKEFLAGS += --output-sync=target"):  # fmt: skip
        assert line in text.splitlines()
    assert "$(SRC_DIR)/mexNvidia_quicksort.cu" in text  # helper is a prerequisite


@pytest.mark.skipif(shutil.which("make") is None, reason="make not found")
def test_make_dry_run_expands_to_the_same_commands(r2022b_plan, tmp_path):
    src, root = tmp_path / "k", tmp_path / "matlab"
    plan = r2022b_plan.with_paths(src_dir=str(src), matlab_root=str(root))
    for source in plan.spec.sources:  # make -n needs the prerequisites to exist
        for path in [source_path(plan, source)] + [
            source_path(plan, source, inc) for inc in source.includes
        ]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    (root / "extern/version").mkdir(parents=True)
    (root / "extern/version/c_mexapi_version.c").touch()
    makefile = mex.write_makefile(r2022b_plan, tmp_path / "Makefile", out_dir="out")
    result = subprocess.run(["make", "-n", "-f", str(makefile), "OBJ_DIR=o", f"SRC_DIR={src}",
                             f"MATLAB_ROOT={root}"], capture_output=True, text=True, check=True,
                            cwd=tmp_path)  # fmt: skip
    made = [ln for ln in result.stdout.splitlines() if not ln.startswith(("mkdir", "echo"))]
    expected = [ln for ln in mex.dry_run(plan, out_dir="out", obj_dir="o").splitlines()
                if not ln.startswith("#")]  # fmt: skip
    assert sorted(made) == sorted(expected)
    assert len(expected) == 11 * 3 + 1  # 11 mex files x (compile, version, link) + one dlink


def test_cli_commands_and_refusal(capsys):
    assert mex.main(["commands", "--profile", "r2022b", "--kilosort-commit", "c43f524"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Kilosort 3.0.2 (c43f524), profile r2022b, CUDA 11.2")
    assert out.count("nvcc -dlink") == 1 and out.count(".mexa64\n") == 11
    assert mex.main(["commands", "--profile", "r2022b", "--gencode", "compute_90,sm_90"]) == 2
    assert "CUDA 11.2 cannot target sm_90" in capsys.readouterr().err


def test_verify_without_manifest(tmp_path):
    problems = mex.verify_manifest(tmp_path)
    assert [p.severity for p in problems] == ["error"]
    assert "no manifest.json" in problems[0].message


# --------------------------------------------------------------------------------------------
# Real compiles against the stand-in mex API
# --------------------------------------------------------------------------------------------


def _test_plan(matlab_root: Path, src_dir: Path = SOURCES, gencode=TEST_GENCODE, spec=None):
    chain = mex.Toolchain(
        profile="standin",
        matlab_root=str(matlab_root),
        cuda_root=CUDA_ROOT,
        cuda_version=_nvcc_cuda_version(),
        host_compiler="g++",
        gencode=gencode,
    )
    spec = spec or mex.MexSpec.from_dict(json.loads((SOURCES / "spec.json").read_text()))
    return mex.MexPlan(chain, spec, str(src_dir), "0123456789abcdef")


@pytest.fixture(scope="session")
def matlab_root(tmp_path_factory):
    if _why_no_compile():
        pytest.skip(_why_no_compile())
    return make_matlab_root(tmp_path_factory.mktemp("standin") / "matlab")


@pytest.fixture(scope="session")
def built(matlab_root, tmp_path_factory):
    """(plan, out_dir): every test source compiled by the generated Makefile, in parallel."""
    plan = _test_plan(matlab_root)
    out = tmp_path_factory.mktemp("built") / "mex"
    mex.build(plan, out, jobs=os.cpu_count(), echo=False)
    return plan, out


@needs_nvcc
def test_each_binary_holds_exactly_its_gencode(built):
    plan, out = built
    manifest = mex.load_manifest(out)
    assert sorted(manifest["binaries"]) == sorted(f"{s.name}.mexa64" for s in plan.spec.sources)
    for source in plan.spec.sources:
        binary = out / f"{source.name}.mexa64"
        listing = subprocess.run([CUOBJDUMP, "--list-elf", "--list-ptx", str(binary)],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
        sass, ptx = mex.parse_cuobjdump(listing)
        assert sass == ("sm_75", "sm_80", "sm_90"), source.name
        # Device linking keeps SASS only: the relocatable mex has no PTX fallback.
        assert ptx == (() if source.dynamic else ("compute_90",)), source.name
        entry = manifest["binaries"][binary.name]
        assert (tuple(entry["sass"]), tuple(entry["ptx"])) == (sass, ptx)


@needs_nvcc
def test_dynamic_parallelism_path(built):
    plan, out = built
    entry = mex.load_manifest(out)["binaries"]["mexTree.mexa64"]
    kinds = [c.split()[1] for c in entry["commands"][:3]]
    assert kinds == ["-dc", "-c", "-dlink"]
    assert "-lcudadevrt" in entry["commands"][2].split()
    assert "-lcudadevrt" in entry["commands"][3].split()
    assert entry["dynamic"] and entry["defines"] == ["ENABLE_STABLEMODE"]
    assert entry["ptx"] == [] and entry["relocatable_ptx"] == ["compute_90"]
    assert entry["includes"] == {"treeHelper.cu": mex.sha256_file(SOURCES / "treeHelper.cu")}
    sections = subprocess.run(["readelf", "-S", "-W", str(out / "mexTree.mexa64")],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "__nv_relfatbin" in sections  # relocatable device code, device-linked


@needs_nvcc
def test_binaries_load_and_export_only_the_mex_entry_points(built, matlab_root):
    _, out = built
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{matlab_root}/bin/glnxa64:{CUDA_ROOT}/lib64"
    for binary in sorted(out.glob("*.mexa64")):
        code = f"import ctypes; lib = ctypes.CDLL({str(binary)!r}); lib.mexFunction"
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        symbols = subprocess.run(["nm", "-D", "--defined-only", str(binary)],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
        exported = {ln.split()[-1].split("@")[0] for ln in symbols.splitlines() if " T " in ln}
        assert exported == {"mexFunction", "mexfilerequiredapiversion"}, binary.name


@needs_nvcc
def test_manifest_contents_and_verification(built):
    plan, out = built
    manifest = mex.load_manifest(out)
    assert mex.verify_manifest(out, profile="standin", kilosort_commit="0123456") == []
    assert manifest["profile"] == "standin"
    assert manifest["kilosort_commit"] == "0123456789abcdef"
    assert manifest["nvcc_version"].startswith(f"release {_nvcc_cuda_version()}")
    assert manifest["gencode"] == list(TEST_GENCODE)
    assert re.fullmatch(r"\d+(\.\d+)*", manifest["host_compiler_version"])
    for name, entry in manifest["binaries"].items():
        assert entry["sha256"] == mex.sha256_file(out / name)
        assert entry["size"] == (out / name).stat().st_size
        assert entry["commands"][-1].endswith(f"-o {out}/{name}")
    axpy = manifest["binaries"]["mexAxpy.mexa64"]
    assert axpy["source_sha256"] == mex.sha256_file(SOURCES / "mexAxpy.cu")
    assert "-DSTANDIN_ALPHA=3" in axpy["commands"][0].split()
    assert axpy["glibcxx"] and all(v.startswith("GLIBCXX_3.4") for v in axpy["glibcxx"])
    predictions = {p.binary: p.mode for p in mex.predict_directory(out, "12.0")}
    # the device-linked mexTree too: through the PTX kept with its relocatable code
    assert predictions == {"mexAxpy.mexa64": "ptx-jit", "mexGPUExample.mexa64": "ptx-jit",
                           "mexScale.mexa64": "ptx-jit", "mexTree.mexa64": "ptx-jit"}  # fmt: skip


@needs_nvcc
def test_tampered_binaries_fail_verification(built, tmp_path):
    _, out = built
    copy = tmp_path / "mex"
    shutil.copytree(out, copy)
    data = bytearray((copy / "mexScale.mexa64").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "mexScale.mexa64").write_bytes(bytes(data))
    with (copy / "mexAxpy.mexa64").open("ab") as handle:
        handle.write(b"\0")
    (copy / "mexTree.mexa64").unlink()
    (copy / "stray.mexa64").write_bytes(b"x")
    problems = {(p.severity, p.binary, p.message.split()[0]) for p in mex.verify_manifest(copy)}
    assert problems == {
        ("error", "mexScale.mexa64", "sha256"),
        ("error", "mexAxpy.mexa64", "size"),
        ("error", "mexAxpy.mexa64", "sha256"),
        ("error", "mexTree.mexa64", "listed"),
        ("warning", "stray.mexa64", "not"),
    }
    wrong = mex.verify_manifest(out, profile="r2022b", kilosort_commit="c43f524")
    assert [p.severity for p in wrong] == ["error", "error"]
    assert mex.main(["verify", str(copy)]) == 1


@needs_nvcc
def test_build_stage_flow_with_the_zipapp(matlab_root, tmp_path):
    """What the Docker stage does: mex.pyz alone, a plan JSON, make -j, then the manifest."""
    stage = tmp_path / "stage"
    stage.mkdir()
    mex.write_zipapp(stage / "mex.pyz")
    spec = mex.MexSpec("test", (mex.MexSource("mexScale", "mexScale.cu"),))
    plan = _test_plan(Path("/nonexistent/matlab"), Path("/nonexistent/src"), spec=spec)
    (stage / "plan.json").write_text(plan.to_json())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = dict(cwd=stage, env=env, capture_output=True, text=True)

    def py(*args):
        result = subprocess.run([sys.executable, "-I", "mex.pyz", *args], **run)
        assert result.returncode == 0, result.stderr
        return result

    py("makefile", "--plan", "plan.json", "-o", "Makefile", "--out-dir", "bin")
    made = subprocess.run(["make", f"-j{os.cpu_count()}", f"MATLAB_ROOT={matlab_root}",
                           f"SRC_DIR={SOURCES}"], **run)  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    py("manifest", "--plan", "plan.json", "--out-dir", "bin", "--matlab-root", str(matlab_root),
       "--src-dir", str(SOURCES), "--cuobjdump", CUOBJDUMP)  # fmt: skip
    assert py("verify", "bin", "--compute-capability", "9.0").stdout.strip() == (
        "mexScale.mexa64: native (sm_90)"
    )
    assert mex.verify_manifest(stage / "bin", profile="standin") == []


# --------------------------------------------------------------------------------------------
# Bad input: clear errors, and an existing output folder is never touched
# --------------------------------------------------------------------------------------------


@pytest.fixture
def existing_out(tmp_path):
    out = tmp_path / "mex-binaries" / "standin" / "0123456"
    out.mkdir(parents=True)
    (out / "mexScale.mexa64").write_bytes(b"previous binary")
    (out / "manifest.json").write_text("{}")
    return out


def _untouched(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "mexScale.mexa64"]
    assert (out / "mexScale.mexa64").read_bytes() == b"previous binary"
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp folders left


@needs_nvcc
def test_missing_source(matlab_root, existing_out, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SOURCES, src)
    (src / "treeHelper.cu").unlink()
    with pytest.raises(UserError, match=r"missing mex source .*treeHelper.cu \(for mexTree\)"):
        mex.build(_test_plan(matlab_root, src), existing_out, replace_existing=True, echo=False)
    _untouched(existing_out)


@needs_nvcc
def test_nvcc_error_names_file_and_message(matlab_root, existing_out, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SOURCES, src)
    (src / "broken.cu").write_text('#include "mex.h"\nvoid mexFunction(int n) { int x = }\n')
    spec = mex.MexSpec.from_dict(json.loads((SOURCES / "spec.json").read_text()))
    spec = mex.MexSpec("test", spec.sources + (mex.MexSource("broken", "broken.cu"),))
    plan = _test_plan(matlab_root, src, spec=spec)
    with pytest.raises(mex.MexBuildError) as err:
        mex.build(plan, existing_out, replace_existing=True, echo=False, jobs=2)
    message = str(err.value)
    assert message.startswith(f"mex build failed: {src}/broken.cu:2: ")
    assert "expected an expression" in message
    _untouched(existing_out)


@needs_nvcc
def test_unsupported_architecture_fails_before_compiling(matlab_root, existing_out):
    plan = _test_plan(matlab_root, gencode=("compute_70,sm_70",))
    with pytest.raises(UserError, match=r"cannot target sm_70 \(supports sm_75\.\.sm_"):
        mex.build(plan, existing_out, replace_existing=True, echo=False)
    _untouched(existing_out)


@needs_nvcc
def test_existing_output_needs_replace_and_is_swapped_after_success(matlab_root, existing_out):
    spec = mex.MexSpec("test", (mex.MexSource("mexScale", "mexScale.cu"),))
    plan = _test_plan(matlab_root, spec=spec, gencode=("compute_80,sm_80",))
    with pytest.raises(UserError, match="already holds files"):
        mex.build(plan, existing_out, echo=False)
    _untouched(existing_out)
    mex.build(plan, existing_out, replace_existing=True, echo=False)
    assert mex.verify_manifest(existing_out) == []
    assert (existing_out / "mexScale.mexa64").read_bytes() != b"previous binary"
    assert [p.name for p in existing_out.parent.iterdir()] == [existing_out.name]


# --------------------------------------------------------------------------------------------
# Spec data files, the build stage's zipapp, the folder swap
# --------------------------------------------------------------------------------------------


def test_every_kilosort_version_has_its_spec_file():
    specs = Path(mex.__file__).parent / "specs"
    assert sorted(p.name for p in specs.glob("*.json")) == sorted(
        f"kilosort-{v}.json" for v in mex.kilosort_versions()
    )
    ks3 = mex.get_spec("3.0.2", diagnostic=False)
    for version in mex.kilosort_versions():
        spec = mex.get_spec(version, diagnostic=False)
        assert spec.kilosort_version == version
        if version.startswith("3."):
            assert spec.sources == ks3.sources
        else:  # Kilosort 2.5 has no spikedetector3PC
            assert spec.sources == tuple(s for s in ks3.sources if s.name != "spikedetector3PC")


def _pyz_python(pyz: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python3 -I -S`` (isolated, no site-packages: the standard library only) from
    ``cwd``, a folder outside the repository."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(
        [sys.executable, "-I", "-S", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_zipapp_runs_with_only_the_standard_library(tmp_path):
    pyz = mex.write_zipapp(tmp_path / "mex.pyz")
    assert zipapp.get_interpreter(str(pyz)) == "/usr/bin/env python3"
    gencode = [str(g) for g in get_profile("r2022b").gencode]
    flags = ["--profile-name", "r2022b", "--matlab-root", ML, "--cuda-root", CU,
             "--cuda-version", "11.2", "--host-compiler", "g++-10", "--src-dir", "/ks/CUDA",
             "--kilosort-commit", "c43f524"] + [f"--gencode={g}" for g in gencode]  # fmt: skip
    result = _pyz_python(pyz, "mex.pyz", "commands", *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    chain = mex.toolchain_from_profile(get_profile("r2022b"))
    expected = mex.dry_run(mex.MexPlan(chain, mex.get_spec("3.0.2"), "/ks/CUDA", "c43f524"))
    assert result.stdout == expected
    # --profile needs the rest of kilosort_docker, which the zipapp does not hold
    refused = _pyz_python(pyz, "mex.pyz", "commands", "--profile", "r2022b", cwd=tmp_path)
    assert refused.returncode == 2 and "--profile needs the kilosort_docker package" in (
        refused.stderr
    )
    (tmp_path / "empty").mkdir()
    missing = _pyz_python(pyz, "mex.pyz", "verify", "empty", cwd=tmp_path)
    assert missing.returncode == 1 and "no manifest.json" in missing.stdout
    # every module comes from the archive
    code = (
        "import sys; sys.path.insert(0, 'mex.pyz'); import kilosort_docker.mex as m, "
        "kilosort_docker.atomic as a, kilosort_docker.mex.pyz as p; "
        "print(m.__file__, a.__file__, p.__file__, m.get_spec('2.5').kilosort_version)"
    )
    where = _pyz_python(pyz, "-c", code, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    *files, version = where.stdout.split()
    assert version == "2.5"
    assert all(f.startswith(f"mex.pyz{os.sep}kilosort_docker{os.sep}") for f in files), files


def test_zipapp_is_deterministic_and_minimal(tmp_path):
    first = mex.write_zipapp(tmp_path / "a.pyz")
    time.sleep(1.1)  # zip timestamps have a 2 s resolution; the entries' must not move
    second = mex.write_zipapp(tmp_path / "b.pyz")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    top = {n.split("/")[1] for n in names if n.startswith("kilosort_docker/")}
    assert top == {"__init__.py", "errors.py", "atomic.py", "mex"}
    assert "__main__.py" in names and "kilosort_docker/mex/specs/kilosort-3.0.2.json" in names
    package = Path(mex.__file__).parent
    here = {p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    assert {n[len("kilosort_docker/mex/") :] for n in names if n.endswith(".py")} >= here


def test_replace_folder_swaps_and_leaves_nothing_behind(tmp_path):
    dest, staged = tmp_path / "dest", tmp_path / "staged"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    staged.mkdir()
    (staged / "new.txt").write_text("new")
    replace_folder(staged, dest)
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]
    (tmp_path / "fresh").mkdir()
    replace_folder(tmp_path / "fresh", tmp_path / "absent")  # nothing to move aside
    assert (tmp_path / "absent").is_dir() and not (tmp_path / "fresh").exists()


def _failing_rename(monkeypatch, fail_from: Path) -> None:
    real = atomic.os.rename

    def rename(src, dst):
        if Path(src) == fail_from:
            raise OSError(18, "Invalid cross-device link (injected)")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)


def test_replace_folder_restores_the_old_folder_when_the_swap_fails(tmp_path, monkeypatch):
    dest, staged = tmp_path / "dest", tmp_path / "staged"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    staged.mkdir()
    (staged / "new.txt").write_text("new")
    _failing_rename(monkeypatch, staged)  # the second rename: staged -> dest
    with pytest.raises(OSError, match="injected"):
        replace_folder(staged, dest)
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    assert (dest / "old.txt").read_text() == "old"
    assert (staged / "new.txt").read_text() == "new"  # left for the caller to clean up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "staged"]


def test_replace_folder_names_the_old_folder_when_it_cannot_be_restored(tmp_path, monkeypatch):
    dest, staged = tmp_path / "dest", tmp_path / "staged"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    staged.mkdir()
    aside = []
    real = atomic.os.rename

    def rename(src, dst):
        if Path(src) == dest:
            aside.append(Path(dst))
            return real(src, dst)
        raise OSError(5, "I/O error (injected)")

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(UserError, match="move it back by hand") as err:
        replace_folder(staged, dest)
    assert str(aside[0]) in str(err.value)
    assert (aside[0] / "old.txt").read_text() == "old"


@needs_nvcc
def test_failed_swap_keeps_the_previous_binaries(matlab_root, existing_out, monkeypatch):
    spec = mex.MexSpec("test", (mex.MexSource("mexScale", "mexScale.cu"),))
    plan = _test_plan(matlab_root, spec=spec, gencode=("compute_80,sm_80",))
    real, into_place = atomic.os.rename, []

    def rename(src, dst):
        if Path(dst) == existing_out:
            into_place.append(src)
            if len(into_place) == 1:  # the new binaries; putting the old ones back works
                raise OSError(18, "Invalid cross-device link (injected)")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        mex.build(plan, existing_out, replace_existing=True, echo=False)
    assert len(into_place) == 2
    _untouched(existing_out)
