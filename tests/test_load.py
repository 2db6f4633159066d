"""The load and fault test (bench/load.py), small: the whole bot under a crowd, clean and
with faults injected. Every command must be answered, nothing crash, nothing be lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import FaultPlan, LoadPlan, run_load

pytestmark = pytest.mark.timeout(90)

SMALL = LoadPlan(commands=120, users=24, chats=6, concurrency=20, ratings=40, bad_inputs=18, burst=30)


async def test_a_crowd_is_served_and_accounted_for(tmp_path: Path):
    report = await run_load(SMALL, FaultPlan(), tmp_path)
    print(report.summary("small, clean"))
    assert report.problems == []
    assert report.sent["meme"] == SMALL.commands + SMALL.burst
    # The burst user outran the limit and was told when to come back; everyone else got memes.
    assert report.answers["cooldown"] >= 5
    assert report.answers["meme"] + report.answers["cooldown"] == report.sent["meme"]
    assert report.answers["refused"] == SMALL.bad_inputs
    assert report.accepted_ratings == report.sent["rating"] > 0


async def test_faults_cost_retries_not_answers_or_data(tmp_path: Path):
    faults = FaultPlan(
        model_fail_every=10, api_errors=8, slow_replies=6, slow_s=0.3, db_locks=2, interval_s=0.1
    )
    report = await run_load(SMALL, faults, tmp_path)
    print(report.summary("small, with faults"))
    assert report.problems == []
    assert report.faults["db_lock"] == 2 and report.faults["api_error"] == 8
    assert report.faults["model_batches_failed"] > 0
    # A failed model batch is the bot's fault: those users are told to try again.
    assert report.answers["busy"] >= 1
