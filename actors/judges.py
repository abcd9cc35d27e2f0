"""Perception-judge backends behind one interface: ``verdicts(requests, deadline) -> list[Outcome]``.

- ``OracleJudge``: the rule-based stand-in for the synthetic task (it knows the generator's facts). Demos/tests.
- ``VLLMJudge``: text LLMs in vLLM engines hosted by ``JudgeEngine`` Ray actors (Llama-3.1-70B or
  Qwen2.5-72B-Instruct on a cluster; the tiny model in tests), prompts batched per engine.
- ``HTTPJudge``: an OpenAI-compatible chat endpoint (a hosted API or ``vllm serve``); the API key is read from
  an environment variable and never logged.

Faults: every call has a timeout, failed calls are retried with exponential backoff (tenacity), and the whole
batch has a deadline (a ``time.monotonic()`` instant). Whatever is not answered by then is an outcome with
``verdict=None`` and a status saying why; nothing waits past the deadline.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from actors.redaction import redact_url
from rewards import judge_prompt, parse_judgement

log = logging.getLogger(__name__)


def model_fingerprint(path: str) -> str:
    """A model folder's absolute path and a hash of its config and of its files' names, sizes and modification
    times: two folders with the same name, or a folder whose weights were replaced, are different judges."""
    root = os.path.realpath(path)
    h = hashlib.sha256()
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            st = os.stat(os.path.join(root, name))
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
        config = os.path.join(root, "config.json")
        if os.path.isfile(config):
            with open(config, "rb") as f:
                h.update(f.read())
    return f"{root}@{h.hexdigest()[:16]}"


ENGINE_MARGIN_S = 30.0  # beyond a judge call's time limit, for the engine's last step and the reply


class JudgeAuthError(RuntimeError):
    """The judge endpoint refused the API key (401/403): every verdict would fail, so the run stops."""


def is_local_url(url: str) -> bool:
    """Whether ``url`` points at this machine (where a plain-http, keyless endpoint is acceptable)."""
    from urllib.parse import urlparse

    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def judge_api_key(cfg) -> str:
    """The HTTP judge's key, read from ``judge.api_key_env``. Missing: an error naming the variable, unless the
    endpoint is on this machine (a local ``vllm serve`` accepts any key, sent as "EMPTY")."""
    key = os.environ.get(cfg.api_key_env)
    if key:
        return key
    if is_local_url(cfg.base_url):
        return "EMPTY"
    raise JudgeAuthError(
        f"the judge's API key is not set: export it as {cfg.api_key_env} (judge.api_key_env) "
        f"for {redact_url(cfg.base_url)}"
    )


@dataclass(frozen=True)
class JudgeRequest:
    question: str
    correct_answer: str
    observation: str
    data_type: str = "video"
    facts: dict | None = None  # the synthetic generator's facts (only the oracle uses them)

    def prompt(self) -> str:
        return judge_prompt(self.question, self.correct_answer, self.observation, self.data_type)


@dataclass(frozen=True)
class Outcome:
    verdict: bool | None
    status: str  # ok | unparseable | failed | timeout | deadline
    text: str | None = None  # the judge's raw reply (explanation), when there is one


class JudgeError(RuntimeError):
    """A judge call failed in a way worth retrying (timeout, connection, server error)."""


def _retrying(retries: int, backoff_s: float, deadline: float) -> Retrying:
    def before_deadline(state) -> bool:  # stop retrying once the next attempt could not finish in time
        return time.monotonic() >= deadline

    backoff = wait_exponential(multiplier=backoff_s, max=max(backoff_s * 8, 0.001))

    def wait_within_deadline(state) -> float:
        return min(backoff(state), max(0.0, deadline - time.monotonic()))

    return Retrying(
        stop=stop_after_attempt(retries + 1) | before_deadline,
        wait=wait_within_deadline,
        retry=retry_if_exception(lambda e: isinstance(e, JudgeError)),
        reraise=True,
    )


def outcome_from_text(text: str | None) -> Outcome:
    verdict = parse_judgement(text)
    return Outcome(verdict, "ok" if verdict is not None else "unparseable", text)


class OracleJudge:
    model_id = "oracle:synthetic-facts"
    reads_facts = True  # its verdict depends on the row's facts, not only on the prompt's texts: they key the cache

    def verdicts(self, requests: list[JudgeRequest], deadline: float) -> list[Outcome]:
        # imported here: the synthetic generator (a test/demo fixture, toy/) is only needed by this stand-in judge
        from toy.synthetic import observation_suffices

        out = []
        for r in requests:
            if not r.facts:
                out.append(Outcome(None, "failed", "the oracle judge needs the synthetic task's facts"))
            else:
                out.append(Outcome(observation_suffices(r.facts, r.observation), "ok"))
        return out


class HTTPJudge:
    """Chat completions against ``base_url`` (OpenAI-compatible), ``max_concurrency`` requests in flight."""

    def __init__(self, cfg):
        from openai import OpenAI

        self.cfg = cfg
        # the identity cached verdicts are keyed and checked by: endpoint, model and sampling
        # (credentials in the URL never reach the cache entries)
        self.model_id = f"http:{redact_url(cfg.base_url)}|{cfg.model}|t={cfg.temperature}|n={cfg.max_tokens}"
        self._client = OpenAI(base_url=cfg.base_url, api_key=judge_api_key(cfg), timeout=cfg.timeout_s, max_retries=0)

    def _call(self, prompt: str, deadline: float) -> Outcome:
        import openai

        def once() -> str | None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            try:
                resp = self._client.with_options(timeout=min(self.cfg.timeout_s, remaining)).chat.completions.create(
                    model=self.cfg.model,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=self.cfg.max_tokens,
                    temperature=self.cfg.temperature,
                )
            except (
                openai.APITimeoutError,
                openai.APIConnectionError,
                openai.InternalServerError,
                openai.RateLimitError,
            ) as e:
                raise JudgeError(type(e).__name__) from e
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise JudgeAuthError(
                    f"the judge at {redact_url(self.cfg.base_url)} refused the API key from "
                    f"{self.cfg.api_key_env} ({e.status_code}): check the key and the model "
                    "name's access"
                ) from None
            return resp.choices[0].message.content if resp.choices else None

        try:
            return outcome_from_text(_retrying(self.cfg.retries, self.cfg.backoff_s, deadline)(once))
        except JudgeAuthError:
            raise
        except (JudgeError, TimeoutError) as e:
            timed_out = isinstance(e, TimeoutError) or "Timeout" in str(e)
            return Outcome(None, "timeout" if timed_out else "failed")
        except Exception as e:  # noqa: BLE001 - a 4xx, a malformed body: not worth retrying, counted as a failure
            return Outcome(None, "failed", f"{type(e).__name__}")

    def verdicts(self, requests: list[JudgeRequest], deadline: float) -> list[Outcome]:
        pool = ThreadPoolExecutor(max_workers=self.cfg.max_concurrency)
        futures = [pool.submit(self._call, r.prompt(), deadline) for r in requests]
        wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        pool.shutdown(wait=False, cancel_futures=True)  # stragglers end at their own timeout, unwaited
        for f in futures:  # a refused key stops the run rather than turning into "failed" verdicts
            if f.done() and not f.cancelled() and isinstance(f.exception(), JudgeAuthError):
                raise f.exception()
        return [f.result() if f.done() and not f.cancelled() else Outcome(None, "deadline") for f in futures]


class JudgeEngine:
    """A Ray actor body hosting one vLLM engine for a text-only judge LLM (wrapped with ``ray.remote``).

    It drives the engine request by request (``add_request`` / ``step``) so that one bad prompt (e.g. longer than
    the engine's context) fails alone, and so that the call's time limit is the engine's own: at the limit the
    unfinished requests are aborted and the engine is free for the next batch, not busy behind it."""

    def __init__(self, model: str, engine_cfg, seed: int = 0):
        from actors.engine import start_engine

        self._llm = start_engine(
            engine_cfg, model, dtype="auto" if engine_cfg.device == "cuda" else "float32", seed=seed
        )
        self._calls = 0
        # where the model loads: the files this engine serves, whichever host's copy they are
        self.fingerprint = model_fingerprint(model)

    def generate(
        self, prompts: list[str], max_tokens: int, temperature: float, time_limit_s: float = float("inf")
    ) -> list[tuple[str | None, str]]:
        """(text, "ok") per prompt, or (None, "failed") for a prompt the engine refused, or (None, "timeout") for
        one unfinished at the time limit (aborted)."""
        from vllm import SamplingParams

        engine, tok = self._llm.llm_engine, self._llm.get_tokenizer()
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
        end = time.monotonic() + time_limit_s
        self._calls += 1
        ids = [f"judge-{self._calls}-{i}" for i in range(len(prompts))]
        results: dict[str, tuple[str | None, str]] = {}
        for rid, p in zip(ids, prompts):
            try:
                text = tok.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                engine.add_request(rid, text, params)
            except Exception as e:  # noqa: BLE001 - vLLM's validation (too long, bad input): this prompt only
                log.warning("judge engine refused a prompt (%s): %s", type(e).__name__, str(e).splitlines()[0][:200])
                results[rid] = (None, "failed")
        pending = [rid for rid in ids if rid not in results]
        while pending:
            if time.monotonic() >= end:
                engine.abort_request(pending)
                results.update({rid: (None, "timeout") for rid in pending})
                break
            for out in engine.step():
                if out.finished and out.request_id not in results:
                    results[out.request_id] = (out.outputs[0].text, "ok")
            pending = [rid for rid in pending if rid not in results]
        return [results[rid] for rid in ids]

    def unfinished(self) -> int:
        return self._llm.llm_engine.get_num_unfinished_requests()

    def ready(self) -> bool:
        return True

    def identity(self) -> str:
        return self.fingerprint


class VLLMJudge:
    """Sends each batch to the judge engines (one chunk per engine, in parallel) and waits within the deadline."""

    def __init__(self, cfg, engines: list):
        if not engines:
            raise ValueError("the vllm judge needs at least one JudgeEngine actor")
        import ray

        self.cfg, self.engines = cfg, engines
        # the model's identity as the engine that loaded it sees it (not this reward host's view of the path)
        fingerprint = ray.get(engines[0].identity.remote())
        self.model_id = f"vllm:{fingerprint}|t={cfg.temperature}|n={cfg.max_tokens}"

    def _chunk(self, engine, prompts: list[str], deadline: float) -> list[Outcome]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        def once() -> list[tuple[str | None, str]]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            limit = min(self.cfg.timeout_s, remaining)
            # the engine aborts what is unfinished at `limit` itself; the margin covers only its last step
            ref = engine.generate.remote(prompts, self.cfg.max_tokens, self.cfg.temperature, limit)
            try:
                return ray.get(ref, timeout=limit + ENGINE_MARGIN_S)
            except GetTimeoutError as e:  # a wedged engine: queued work is dropped, Ray cannot stop a running step
                ray.cancel(ref)
                raise JudgeError("Timeout") from e
            except RayActorError as e:  # the engine died; Ray restarts it and a retry may land
                raise JudgeError("engine died") from e
            except RayTaskError as e:  # the engine raised mid-batch (not one refused prompt): its chunk has failed
                raise JudgeError(f"engine error: {type(e.cause).__name__ if e.cause else 'unknown'}") from e

        try:
            answers = _retrying(self.cfg.retries, self.cfg.backoff_s, deadline)(once)
        except (JudgeError, TimeoutError) as e:
            status = "timeout" if isinstance(e, TimeoutError) or "Timeout" in str(e) else "failed"
            return [Outcome(None, status)] * len(prompts)
        return [outcome_from_text(text) if status == "ok" else Outcome(None, status) for text, status in answers]

    def verdicts(self, requests: list[JudgeRequest], deadline: float) -> list[Outcome]:
        if not requests:
            return []
        prompts = [r.prompt() for r in requests]
        n = min(len(self.engines), len(prompts))
        bounds = [round(i * len(prompts) / n) for i in range(n + 1)]
        with ThreadPoolExecutor(max_workers=n) as pool:
            parts = list(
                pool.map(lambda i: self._chunk(self.engines[i], prompts[bounds[i] : bounds[i + 1]], deadline), range(n))
            )
        return [o for part in parts for o in part]


def make_judge(cfg, engines: list | None = None):
    """The backend named by ``judge.backend`` (``cfg`` is a ``JudgeSection``)."""
    if cfg.backend == "oracle":
        return OracleJudge()
    if cfg.backend == "http":
        return HTTPJudge(cfg)
    return VLLMJudge(cfg, engines or [])
