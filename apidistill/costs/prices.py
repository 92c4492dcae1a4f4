"""Prices per model: a user override first, then the genai-prices database.

Costs are :class:`~decimal.Decimal` USD end to end so ledger totals equal a provider's
statement to the cent. An unpriced model is an error unless the user allows it, and then its
costs are ``None`` (unknown), never a silent 0.

Prices from genai-prices come from the data bundled with the installed package: nothing is
downloaded at run time, so a run's costs depend only on versions you can pin. Tiered prices
(e.g. a higher rate above 200k input tokens) are taken at their base tier.

Prompt caching has two rates besides the input rate: cache **reads** (OpenAI's automatic
``cached_tokens``, Anthropic's ``cache_read_input_tokens``; 0.1× input at Anthropic, 0.1-0.5×
at OpenAI) and cache **writes** (Anthropic's ``cache_creation_input_tokens``: 1.25× input for
the 5-minute TTL this project uses). genai-prices carries both where the provider has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from urllib.parse import urlsplit

from apidistill.config import PriceConfig, TeacherConfig
from apidistill.errors import ConfigError
from apidistill.records import Usage

__all__ = [
    "MTOK",
    "ModelPrice",
    "cost_of",
    "max_input_rate",
    "price_for_teacher",
    "resolve_price",
    "worst_case_cost",
]

MTOK = Decimal(1_000_000)


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens. ``batch_discount`` is the share taken off by Batch APIs.

    ``cached_input_per_mtok`` is the cache-read rate, ``cache_write_per_mtok`` the rate of
    input written to a prompt cache (Anthropic, 5-minute TTL); ``None`` means the input rate.
    """

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    batch_discount: Decimal = Decimal("0.5")
    source: str = "override"  # "override", "genai-prices", "self-hosted"
    cache_write_per_mtok: Decimal | None = None

    @property
    def cache_read_rate(self) -> Decimal:
        return (
            self.input_per_mtok
            if self.cached_input_per_mtok is None
            else self.cached_input_per_mtok
        )

    @property
    def cache_write_rate(self) -> Decimal:
        return (
            self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        )


def cost_of(price: ModelPrice | None, usage: Usage, *, batch: bool = False) -> Decimal | None:
    """Exact cost of one answered request; ``None`` when the model is unpriced."""
    if price is None:
        return None
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    written = min(usage.cache_write_input_tokens, usage.input_tokens - cached)
    total = (
        Decimal(usage.input_tokens - cached - written) * price.input_per_mtok
        + Decimal(cached) * price.cache_read_rate
        + Decimal(written) * price.cache_write_rate
        + Decimal(usage.output_tokens) * price.output_per_mtok
    ) / MTOK
    if batch:
        total *= Decimal(1) - price.batch_discount
    return total


def worst_case_cost(
    price: ModelPrice | None, input_tokens: int, max_tokens: int, *, batch: bool = False
) -> Decimal | None:
    """What a request can cost at most: ``max_tokens`` out, and every input token at the
    dearest input rate (:func:`max_input_rate`): uncached, or written to the prompt cache
    where writes cost more (Anthropic). Any split of ``input_tokens`` into plain input, cache
    reads and cache writes costs no more, so the budget's guarantee holds with caching on."""
    if price is None:
        return None
    total = (
        Decimal(input_tokens) * max_input_rate(price) + Decimal(max_tokens) * price.output_per_mtok
    ) / MTOK
    if batch:
        total *= Decimal(1) - price.batch_discount
    return total


def max_input_rate(price: ModelPrice) -> Decimal:
    """The most one input token can cost: plain, cache read or cache write."""
    return max(price.input_per_mtok, price.cache_read_rate, price.cache_write_rate)


# --------------------------------------------------------------------------- resolving a price

# Our provider names → genai-prices provider ids (``openai_compatible`` is found by base URL).
_GENAI_PROVIDER = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "cohere": "cohere",
    "meta": "meta",
}
_OFFICIAL_HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}


def _override_price(override: PriceConfig) -> ModelPrice | None:
    per_token = override.input_per_mtok is not None or override.output_per_mtok is not None
    hourly = override.usd_per_hour is not None
    if per_token and hourly:
        raise ConfigError(
            "give either per-token prices or usd_per_hour + tokens_per_second, not both",
            key="teacher.price",
        )
    if hourly:
        # $/hour ÷ (tokens/s × 3600 s) = $/token, charged to input and output alike: prefill is
        # usually faster than generation, so this bounds the machine's cost from above.
        tps = Decimal(str(override.tokens_per_second))
        per_mtok = override.usd_per_hour * MTOK / (tps * Decimal(3600))  # type: ignore[operator]
        return ModelPrice(per_mtok, per_mtok, per_mtok, Decimal(0), source="override ($/hour)")
    if not per_token:
        return None
    if override.input_per_mtok is None or override.output_per_mtok is None:
        raise ConfigError(
            "a price override needs both input_per_mtok and output_per_mtok",
            key="teacher.price",
            hint="add the missing one (USD per million tokens)",
        )
    return ModelPrice(
        override.input_per_mtok,
        override.output_per_mtok,
        override.cached_input_per_mtok,
        override.batch_discount,
        source="override",
        cache_write_per_mtok=override.cache_write_per_mtok,
    )


def _flat(value: object) -> Decimal | None:
    """A genai-prices price as one number: tiered prices give their base tier."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    base = getattr(value, "base", None)
    return base if isinstance(base, Decimal) else None


def _bundled_snapshot():
    """The price table shipped inside the genai-prices wheel.

    Built directly rather than through ``genai_prices.calc_price`` so that a process-wide
    auto-update (``genai_prices.UpdatePrices``, which downloads over the network) can never
    change what apidistill charges: prices come from the installed package version only.
    """
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot

    return DataSnapshot(providers=providers, from_auto_update=False)


def _genai_price(provider: str, model: str, base_url: str | None) -> ModelPrice | None:
    provider_id = _GENAI_PROVIDER.get(provider)
    host = (urlsplit(base_url).hostname or "").rstrip(".") if base_url else ""
    api_url = None
    gateway = provider in ("openai", "anthropic") and _is_private_url(base_url)
    if host and host != _OFFICIAL_HOSTS.get(provider) and not gateway:
        # another host speaking the same API (DeepSeek, Mistral, ...) is found by its URL;
        # openai/anthropic on a local address is a gateway to that provider (its prices)
        provider_id, api_url = None, base_url
    if provider_id is None and api_url is None:
        return None
    snapshot = _bundled_snapshot()
    try:
        _, info = snapshot.find_provider_model(model, None, provider_id, api_url)
    except LookupError:
        return None
    now = datetime.now(UTC)
    standard = info.get_prices(now)
    batch = info.get_prices(now, {"processing": "batch"})
    inp, out = _flat(standard.input_mtok), _flat(standard.output_mtok)
    if inp is None or out is None:
        return None
    discount = Decimal(0)
    b_in, b_out = _flat(batch.input_mtok), _flat(batch.output_mtok)
    if b_in is not None and b_out is not None and inp > 0 and out > 0 and batch is not standard:
        # The smaller of the two discounts, so a batch estimate never comes out too low.
        discount = max(Decimal(0), min(1 - b_in / inp, 1 - b_out / out))
    return ModelPrice(
        input_per_mtok=inp,
        output_per_mtok=out,
        cached_input_per_mtok=_flat(standard.cache_read_mtok),
        cache_write_per_mtok=_flat(standard.cache_write_mtok),
        batch_discount=discount,
        source=f"genai-prices {_genai_version()} ({info.id})",
    )


@lru_cache(maxsize=1)
def _genai_version() -> str:
    from importlib.metadata import version

    return version("genai-prices")


def resolve_price(
    provider: str,
    model: str,
    *,
    override: PriceConfig | None = None,
    allow_unpriced: bool = False,
    self_hosted: bool = False,
    base_url: str | None = None,
) -> ModelPrice | None:
    """The price a run charges per token, in order: the user's override, 0 for a self-hosted
    teacher, then the genai-prices table bundled with the installed package (never fetched).

    ``None`` means unpriced (costs recorded as unknown): only when ``allow_unpriced`` is set;
    otherwise an unknown model is a :class:`ConfigError` saying how to price it.
    ``base_url`` lets an OpenAI-compatible provider (DeepSeek, Mistral, ...) be found by host.
    """
    if override is not None:
        price = _override_price(override)
        if price is not None:
            return price
    if self_hosted:
        return ModelPrice(Decimal(0), Decimal(0), Decimal(0), Decimal(0), source="self-hosted")
    price = _genai_price(provider, model, base_url)
    if price is not None:
        return price
    if allow_unpriced:
        return None
    where = f" at {base_url}" if base_url else ""
    raise ConfigError(
        f"no price known for {provider} / {model!r}{where} "
        f"(genai-prices {_genai_version()} has no entry)",
        key="teacher.price",
        hint="set teacher.price (input_per_mtok and output_per_mtok, USD per million tokens) "
        "or teacher.allow_unpriced: true to record costs as unknown",
    )


def price_for_teacher(
    teacher: TeacherConfig, *, self_hosted: bool | None = None
) -> ModelPrice | None:
    """:func:`resolve_price` for a teacher config; a server on this machine or network (or one
    started by ``apidistill serve``) counts as self-hosted unless ``self_hosted`` says otherwise.
    """
    if self_hosted is None:
        from apidistill.policy.engine import teacher_route

        self_hosted = teacher_route(teacher)[0] == "self_hosted" and (
            teacher.launch is not None or _is_private_url(teacher.base_url)
        )
    return resolve_price(
        teacher.provider,
        teacher.model,
        override=teacher.price,
        allow_unpriced=teacher.allow_unpriced,
        self_hosted=self_hosted,
        base_url=teacher.base_url,
    )


def _is_private_url(url: str | None) -> bool:
    import ipaddress

    host = (urlsplit(url).hostname or "") if url else ""
    if host in ("localhost", "host.docker.internal"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified
