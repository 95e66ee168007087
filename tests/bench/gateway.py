"""The model gateway's added latency: `python tests/bench/gateway.py` prints JSON.

An ollama client calls the scripted model server on loopback, once directly and once
through a ModelGateway, alternately so both see the same machine load; non-streamed
and streamed chats are measured separately. The added latency is the gateway's
percentile minus the direct one (percentiles of paired differences would mostly
measure the noise of two independent samples). The target is added p95 < 5 ms.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import ollama

from agenttest.runner.gateway import ModelGateway, Upstream
from agenttest_dev.modelserver import ScriptedModelServer

# A reply of a realistic length for one turn: ~40 streamed pieces.
REPLY = " ".join(f"word{index}" for index in range(40))
SCRIPT = [{"match": r"bench", "reply": REPLY}]
MESSAGES = [{"role": "user", "content": "bench question"}]
WARMUP_CALLS = 20


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _timed_ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def gateway_latency(samples: int = 200) -> dict[str, float]:
    """p50/p95 of chat wall time direct and through the gateway, and what it adds (ms)."""
    results: dict[str, float] = {"samples": float(samples)}
    with (
        ScriptedModelServer.from_script(SCRIPT) as model,
        ModelGateway(Upstream(provider="ollama", endpoint=model.url)) as gateway,
    ):
        direct_client = ollama.Client(host=model.url)
        gateway_client = ollama.Client(host=gateway.url)
        gateway.open_case("bench")

        for mode, stream in (("chat", False), ("stream", True)):

            def chat(client: ollama.Client, stream: bool = stream) -> object:
                if stream:
                    # A streamed answer is only over when its last piece arrived.
                    return list(client.chat(model="scripted", messages=MESSAGES, stream=True))
                return client.chat(model="scripted", messages=MESSAGES, stream=False)

            for _ in range(WARMUP_CALLS):
                chat(direct_client)
                chat(gateway_client)
            direct: list[float] = []
            through: list[float] = []
            for _ in range(samples):
                direct.append(_timed_ms(lambda: chat(direct_client)))
                through.append(_timed_ms(lambda: chat(gateway_client)))

            for name, fraction in (("p50", 0.50), ("p95", 0.95)):
                direct_ms = percentile(direct, fraction)
                gateway_ms = percentile(through, fraction)
                results[f"{mode}_direct_{name}_ms"] = round(direct_ms, 3)
                results[f"{mode}_gateway_{name}_ms"] = round(gateway_ms, 3)
                results[f"{mode}_added_{name}_ms"] = round(gateway_ms - direct_ms, 3)

        observed = gateway.close_case()
        # Every call through the gateway was seen, answered in full.
        expected = 2 * (samples + WARMUP_CALLS)
        if observed.model_calls != expected or any(not call.ok for call in observed.calls):
            raise RuntimeError(f"the gateway saw {observed.model_calls} calls, not {expected}")
    return results


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print(json.dumps(gateway_latency(count), indent=2))
