"""Fixtures for cost tests: run configs built in code and requests shaped like the pipeline's."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apidistill.config import RunConfig
from apidistill.records import GenerationParams, Message, TeacherRequest

SYSTEM = "You extract the order number and the product from a support ticket."
SHOTS = [
    (
        "Order #123456: the Harbor Steel Water Bottle leaks.",
        "order_id: 123456\nproduct: Harbor Steel Water Bottle",
    ),
    (
        "My 1234-5678 order (Nimbus Desk Lamp) never came.",
        "order_id: 1234-5678\nproduct: Nimbus Desk Lamp",
    ),
]


def make_requests(texts, *, max_tokens=40, gold=None, prefix=True):
    out = []
    for i, text in enumerate(texts):
        msgs = [Message(role="system", content=SYSTEM)] if prefix else []
        if prefix:
            for u, a in SHOTS:
                msgs += [Message(role="user", content=u), Message(role="assistant", content=a)]
        msgs.append(Message(role="user", content=text))
        out.append(
            TeacherRequest(
                messages=msgs,
                params=GenerationParams(max_tokens=max_tokens),
                prompt_id=f"t{i}",
                metadata={"gold": gold[i] if gold else None},
            )
        )
    return out


def run_config(teacher: dict, *, budget="1.00", harvest=None) -> RunConfig:
    return RunConfig.model_validate(
        {
            "teacher": teacher,
            "prompts": {"path": "tickets.jsonl"},
            "policy": {"use": "internal"},
            "budget": {"usd": Decimal(budget)},
            "harvest": harvest or {},
        }
    )


TICKETS = [
    "Hi, order 778812 arrived without the Aurora Yoga Mat I paid for.",
    "Where is my Cobalt Travel Mug? Order #99017, placed 3 days ago, call me at 555-0101.",
    "The Maple Cutting Board from order 4410-2291 is cracked. Refund please!",
    "I want to return the Zephyr Bluetooth Speaker (order 310077).",
]


@pytest.fixture
def tickets():
    return list(TICKETS)


@pytest.fixture(name="make_requests")
def _make_requests_fixture():
    """Teacher requests shaped like the pipeline's: system + 2 shots + the ticket."""
    return make_requests


@pytest.fixture(name="run_config")
def _run_config_fixture():
    """A RunConfig built in code from a teacher section."""
    return run_config
