"""Generate the demo's customer-support tickets, their gold answers and the few-shot prompt.

The offline demo needs a task the 135M teacher really does well with its long prompt and
badly without it (``shared/design/DEMO-NOTES.md``): pull the order number and the product
name out of a realistic ticket. Realism is what makes the number honest, so tickets vary in
tone (angry, polite, terse, rambling, non-native), length (1-4 sentences plus greeting and
sign-off) and carry distractor numbers (prices, dates, phone, tracking and old case numbers)
and sign-off names. Everything comes from composable pools and one seed, so the same seed
always writes the same bytes.

Gold convention (the few-shot answers follow it too):
- ``order_id`` is the order number as the customer wrote it, minus a leading ``#``; a dash
  stays (``#482913`` -> ``482913``, ``4829-1377`` -> ``4829-1377``). Order numbers are digits
  only: the 135M teacher drops letter prefixes, so a prefixed id would be a gold it cannot hit.
- ``product`` is the catalogue name verbatim (brand + item, e.g. ``Harbor Steel Water Bottle``).

The prompt's shots come from a separate pool: their own random stream, their own slice of the
catalogue, and no text or order number shared with ``tickets.jsonl``.

Run: ``python examples/demo/make_tickets.py`` (writes tickets.jsonl and prototype_prompt.yaml
into ``apidistill/demo_data/``, where the package ships them for ``apidistill demo``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from apidistill.resources import demo_data_dir

SEED = 12
N_TICKETS = 420
N_SHOTS = 16
SHOT_PRODUCTS = 48  # catalogue names reserved for the shots, never used in tickets
SHOT_CANDIDATES = 200  # shot pool the 16 are picked from
SHOT_CHARS = 180  # preferred shot length
SHOT_WANT: dict[str, int] = {}  # tags to show more than once
# Which shuffle of the shots: the last shot is the 135M teacher's strongest attractor (it
# answers that shot's product for tickets it is unsure about), and orders differ by up to
# 10 points. Chosen on dev tickets that are not in tickets.jsonl; see MEASUREMENTS.md.
SHOT_ORDER = 0
SHOT_MAX_CHARS = 220  # longer shots would push the prompt past ~1,600 tokens

LABELS = ("damaged", "late", "wrong_item", "refund", "other")
TONES = ("angry", "polite", "terse", "rambling", "nonnative")
ORDER_FORMATS = ("hash", "dash", "plain")

SYSTEM = (
    "Extract two fields from the customer-support ticket. Reply with exactly two lines:\n"
    "order_id: <the order number: its digits and any dash, without a leading #>\n"
    "product: <the full product name, brand first, copied exactly from the ticket>\n"
    "Ignore prices, dates, phone, tracking and case numbers, and people's names."
)

# --- products: brand + optional modifier + item ------------------------------------------

BRANDS = (
    "Harbor", "Northwind", "Bluepeak", "Cedarline", "Kestrel", "Lumen", "Oakridge",
    "Pinecrest", "Silverleaf", "Tidewater", "Summit", "Ember", "Fjord", "Granite", "Willow",
    "Coastal", "Alder", "Meridian", "Nimbus", "Aurora", "Redwood", "Sable", "Juniper",
    "Copperfield", "Brightwell", "Everfield", "Halcyon", "Vantage", "Orchard", "Stonebrook",
    "Marlow", "Quill",
)  # fmt: skip

ITEMS: dict[str, tuple[str, ...]] = {
    "Water Bottle": ("Steel", "Insulated", "Glass", "Sport"),
    "Coffee Mug": ("Ceramic", "Travel", "Enamel"),
    "Earbuds": ("Wireless", "Noise-Cancelling", "Sport"),
    "Bluetooth Speaker": ("Portable", "Waterproof", "Mini"),
    "Yoga Mat": ("Cork", "Travel", "Extra-Thick"),
    "Skillet": ("Cast Iron", "Nonstick", "12-inch"),
    "Desk Lamp": ("LED", "Adjustable", "Clip-On"),
    "Pillow": ("Memory Foam", "Cooling", "Down"),
    "Backpack": ("Hiking", "Laptop", "Rolltop"),
    "Kettle": ("Electric", "Gooseneck", "Stovetop"),
    "Running Shoes": ("Trail", "Road", "Lightweight"),
    "Rain Jacket": ("Packable", "Hooded", "Kids"),
    "Phone Case": ("Leather", "Clear", "Rugged"),
    "Charger": ("USB-C", "65W", "Wireless", "Travel"),
    "Throw Blanket": ("Wool", "Fleece", "Knitted"),
    "Chef Knife": ("8-inch", "Damascus", "Ceramic"),
    "Air Fryer": ("Compact", "Digital", "XL"),
    "French Press": ("Glass", "Steel"),
    "Laptop Sleeve": ("Felt", "Neoprene", "Padded"),
    "Wall Clock": ("Wooden", "Silent", "Modern"),
    "Smart Watch": ("Fitness", "Kids", "Classic"),
    "Office Chair": ("Ergonomic", "Mesh", "Executive"),
    "Towel Set": ("Cotton", "Bamboo", "Quick-Dry"),
    "Garden Hose": ("Expandable", "Heavy-Duty"),
    "Tent": ("2-Person", "Camping", "Ultralight"),
    "Sleeping Bag": ("Down", "Summer", "Mummy"),
    "Blender": ("Personal", "High-Speed", "Hand"),
    "Toaster": ("2-Slice", "4-Slice", "Retro"),
    "Keyboard": ("Mechanical", "Wireless", "Compact"),
    "Mouse": ("Wireless", "Gaming", "Vertical"),
    "Duvet Cover": ("Linen", "Cotton", "Flannel"),
    "Bike Helmet": ("Commuter", "Kids", "Mountain"),
    "Cutting Board": ("Bamboo", "Walnut", "Plastic"),
    "Baby Monitor": ("Video", "Audio", "Smart"),
    "Dog Bed": ("Orthopedic", "Washable", "Large"),
    "Shower Head": ("Rainfall", "Handheld", "Filtered"),
    "Sunglasses": ("Polarized", "Aviator", "Sport"),
    "Headphones": ("Over-Ear", "Studio", "Wireless"),
    "Frying Pan": ("Ceramic", "Copper", "Carbon Steel"),
    "Plant Pot": ("Terracotta", "Self-Watering", "Hanging"),
}


def catalogue(seed: int) -> list[str]:
    """All product names the shop sells, in a seeded order.

    Each brand sells a seeded subset of items, so the catalogue reads like a real shop's
    rather than a full cross product (which would also make brands trivially guessable).
    """
    rng = random.Random(f"{seed}:catalogue")
    names: list[str] = []
    for brand in BRANDS:
        for item in rng.sample(sorted(ITEMS), 9):
            mod = rng.choice((*ITEMS[item], ""))
            names.append(" ".join(part for part in (brand, mod, item) if part))
    names = sorted(set(names))
    rng.shuffle(names)
    return names


# --- ticket text: slots filled from tone- and label-specific pools -------------------------

OPENERS: dict[str, tuple[str, ...]] = {
    "angry": ("", "", "Hello?", "Seriously.", "Unbelievable.", "Hi."),
    "polite": ("Hi,", "Hello,", "Good morning,", "Dear support team,", "Hi there,", ""),
    "terse": ("", "", "", "Hi.", "Hey."),
    "rambling": ("Hi there!", "Hello,", "Hey team,", "Hi, hope you're well.", ""),
    "nonnative": ("Hello,", "Dear Sir/Madam,", "Good day,", "Hello sir,", "Hi,"),
}

CLOSINGS: dict[str, tuple[str, ...]] = {
    "angry": ("", "{first}", "- {full}", "Not happy, {first}", "{full}", ""),
    "polite": ("Thanks,\n{first}", "Kind regards,\n{full}", "Many thanks, {first}",
               "Best,\n{first}", "Thank you!", "Cheers, {first}"),
    "terse": ("", "", "thx", "- {first}", "{first}"),
    "rambling": ("Thanks so much!\n{first}", "Anyway, thanks in advance, {first}",
                 "Thank you, {full}", "Talk soon,\n{first}", "Best wishes, {first}"),
    "nonnative": ("Thank you very much.\n{full}", "Best regards, {full}",
                  "Waiting your answer. {first}", "Thanks and regards,\n{full}"),
}  # fmt: skip

# Sentences naming both fields; {order}/{Order} = "order #482913", "order no. 4829-1377", ...
CORE: dict[str, dict[str, tuple[str, ...]]] = {
    "damaged": {
        "angry": (
            "The {product} from {order} showed up smashed.",
            "I paid {price} for the {product} and it arrived broken. {Order}, fix it.",
            "Your courier destroyed my {product}. {Order}.",
            "{Order}: the {product} is cracked right out of the box. This is the second time.",
        ),
        "polite": (
            "Unfortunately the {product} in my {order} arrived damaged.",
            "I received {order} today, but the {product} has a dent on one side.",
            "The {product} I ordered ({order}) was scratched when I opened it.",
        ),
        "terse": (
            "{Order} - {product} arrived broken.",
            "{product} damaged. {Order}.",
            "{oid}: {product} cracked.",
        ),
        "rambling": (
            "So I finally got {order} yesterday after work, and when I opened the box the "
            "{product} was in pieces, which was honestly a bit of a shock.",
            "My partner picked up the parcel for {order} on {date} and we only noticed this "
            "morning that the {product} has a big crack along the bottom.",
        ),
        "nonnative": (
            "I am receive the {product} broken, it is from the {order}.",
            "The {product} is arrive with damage. My {order}.",
            "Please help, {order} come today and {product} is break.",
        ),
    },
    "late": {
        "angry": (
            "Where is my {product}? {Order} was supposed to be here on {date}.",
            "{Order} still hasn't arrived and nobody answers. I need the {product} now.",
            "Three weeks waiting for a {product}. {Order}. Ridiculous.",
        ),
        "polite": (
            "Could you check on {order}? The {product} has not arrived yet.",
            "I'm still waiting for the {product} from {order}, expected on {date}.",
            "My {order} for the {product} seems to be delayed.",
        ),
        "terse": (
            "{Order} not delivered. {product}.",
            "{product} still not here, {order}.",
            "Status of {order}? ({product})",
        ),
        "rambling": (
            "I ordered the {product} a while ago for a trip and the tracking hasn't moved "
            "since {date}, so I wanted to ask about {order} before I give up on it.",
            "I keep checking my porch every day, but {order} with the {product} still isn't "
            "here and the trip is coming up fast.",
        ),
        "nonnative": (
            "My {order} is not arrive until now, it is {product}.",
            "I wait for the {product} very long time, the {order} still not come.",
            "When I will get my {product}? It is {order}.",
        ),
    },
    "wrong_item": {
        "angry": (
            "I ordered a {product} and got something completely different. {Order}.",
            "Wrong item again! {Order} should be a {product}.",
            "What you sent me is NOT the {product}. {Order}.",
        ),
        "polite": (
            "I think there was a mix-up with {order}: I ordered the {product} but received a "
            "different item.",
            "The package for {order} contained the wrong product instead of the {product}.",
            "I received someone else's item in {order}; I was expecting the {product}.",
        ),
        "terse": (
            "Wrong item in {order}. Ordered {product}.",
            "{Order}: got wrong thing, wanted {product}.",
            "{oid} wrong item, should be {product}.",
        ),
        "rambling": (
            "This is a bit funny, but the box for {order} had a completely different thing "
            "inside, and I definitely ordered the {product}, I even checked my confirmation.",
            "My son was excited to open {order} but instead of the {product} we found "
            "something I've never seen before.",
        ),
        "nonnative": (
            "I order {product} but in the box is other thing. Order is {oid}.",
            "You send me wrong article for {order}, I want the {product}.",
            "The {order} have not the {product} inside, it is different product.",
        ),
    },
    "refund": {
        "angry": (
            "I want my money back for the {product}. {Order}. Now.",
            "Refund {order} immediately, the {product} is junk.",
            "Cancel and refund the {product} from {order}. I'm done with this shop.",
        ),
        "polite": (
            "I'd like to return the {product} from {order} and get a refund.",
            "Could I get a refund for the {product}? It's {order}.",
            "Please refund {order}; the {product} doesn't suit me.",
        ),
        "terse": (
            "Refund for {order} please. {product}.",
            "Return {product}, {order}.",
            "{oid} - refund the {product}.",
        ),
        "rambling": (
            "I bought the {product} thinking it would fit in my small kitchen, but it really "
            "doesn't, so I'd like to send back {order} and get a refund if possible.",
            "After thinking about it for a week I've decided the {product} isn't for me, so "
            "I'm hoping to return {order} for a refund.",
        ),
        "nonnative": (
            "I want return the {product} and have my money back. {Order}.",
            "Please make refund for {order}, the {product} is not like in photo.",
            "Is possible to get refund? I buy {product}, the {order}.",
        ),
    },
    "other": {
        "angry": (
            "Why can't I change the address on {order}? It's just a {product}.",
            "Your manual for the {product} is useless. {Order}.",
            "I was charged twice for the {product}! {Order}.",
        ),
        "polite": (
            "Could you send me an invoice for {order}? It was the {product}.",
            "Is there a warranty on the {product}? I bought it with {order}.",
            "How do I set up the {product} from {order}?",
            "I'd like to change the delivery address for {order} (the {product}).",
        ),
        "terse": (
            "Invoice for {order} pls. {product}.",
            "{product} - missing manual. {Order}.",
            "Change address for {order}, {product}.",
        ),
        "rambling": (
            "I'm moving next week, so I was wondering whether the {product} on {order} could "
            "go to my new place instead, if it hasn't left yet.",
            "My mom loves the {product} and wants a second one, but first I need the receipt "
            "for {order} for my expense report.",
        ),
        "nonnative": (
            "How I can connect the {product}? I buy it in {order}.",
            "Please can you give me invoice for the {order}, product {product}.",
            "I need to change my address for {order}, the {product}.",
        ),
    },
}

ORDER_REFS = (
    "order {id}", "order {id}", "order number {id}", "order no. {id}", "order ID {id}",
    "order nr {id}", "order ref {id}",
)  # fmt: skip

# Extra sentences with distractor numbers and detail; {first}/{full} are sign-off names.
EXTRAS: dict[str, tuple[str, ...]] = {
    "damaged": (
        "I have photos if you need them.",
        "The box itself looked fine from the outside.",
        "It was delivered on {date}.",
        "I paid {price} for it.",
        "It was a gift, so this is really embarrassing.",
    ),
    "late": (
        "Tracking {tracking} hasn't updated in days.",
        "It was supposed to arrive by {date}.",
        "I paid {price} for express shipping.",
        "The courier page just says 'in transit'.",
        "Nobody has left a delivery note either.",
    ),
    "wrong_item": (
        "I've attached a photo of what came.",
        "I still have the original packaging.",
        "It arrived on {date}.",
        "I need the right one before {date}.",
    ),
    "refund": (
        "I paid {price} by card.",
        "It's unused and still in the box.",
        "I received it on {date}.",
        "The return label I got has tracking {tracking}.",
        "Do I have to pay for the return shipping?",
    ),
    "other": (
        "I ordered it on {date}.",
        "The total was {price}.",
        "My VAT number is on my account.",
        "No rush on this.",
    ),
    "any": (
        "You can reach me at {phone}.",
        "Call me on {phone} if that's easier.",
        "This is my {count} order from you.",
        "Please get back to me soon.",
        "I've been a customer for {years} years.",
        "My phone number is {phone}.",
        "The e-mail on my account is the one I'm writing from.",
        "I'm away from {date}, so please answer before then.",
        "I hope this can be sorted quickly.",
    ),
}

# Old case numbers open a follow-up ticket. After the order number they would be the last
# number in the ticket, which the 135M teacher copies instead of the order number (measured:
# most such tickets wrong), so they come first, as follow-ups usually do.
FOLLOW_UPS = (
    "Following up on case {case}.",
    "Re: case {case}.",
    "This is about my earlier case {case}, which is still open.",
    "Reference from your last email: {case}.",
    "Second time writing (case {case}).",
)
FOLLOW_UP_RATE = 0.04

FIRST = (
    "Maria", "Tom", "Aisha", "Wei", "Priya", "Oluwaseun", "Sven", "Kenji", "Lucia", "Dmitri",
    "Fatima", "James", "Chloe", "Mateo", "Ingrid", "Rahul", "Zoe", "Kwame", "Hana", "Pierre",
)  # fmt: skip
LAST = (
    "Becker", "Okafor", "Nguyen", "Silva", "Kowalski", "Haddad", "Larsen", "Tanaka", "Moreau",
    "Patel", "O'Brien", "Rossi", "Andersson", "Mendes", "Yilmaz", "Chen",
)  # fmt: skip
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip


@dataclass(frozen=True)
class Ticket:
    id: str
    text: str
    order_id: str  # gold, normalized (no leading '#')
    product: str
    label: str
    tone: str
    order_format: str
    tags: frozenset[str] = frozenset()  # what the ticket exercises; used to pick the shots

    @property
    def gold(self) -> str:
        return gold_answer(self.order_id, self.product)

    def row(self) -> dict[str, str]:
        return {
            "id": self.id,
            "text": self.text,
            "gold": self.gold,
            "order_id": self.order_id,
            "product": self.product,
            "label": self.label,
            "tone": self.tone,
            "order_format": self.order_format,
        }


def gold_answer(order_id: str, product: str) -> str:
    """The exact answer the teacher is asked for (and the shots show)."""
    return f"order_id: {order_id}\nproduct: {product}"


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))


def order_number(rng: random.Random, fmt: str) -> tuple[str, str]:
    """(as written in the ticket, gold) for one order-number format."""
    if fmt == "hash":
        d = _digits(rng, 6)
        return "#" + d, d
    if fmt == "dash":
        d = f"{_digits(rng, 4)}-{_digits(rng, 4)}"
        return d, d
    d = _digits(rng, 7)
    return d, d


def _distractors(rng: random.Random) -> dict[str, str]:
    """Fresh values for every distractor slot (unused ones are simply ignored)."""
    first = rng.choice(FIRST)
    cents = rng.randint(0, 99)
    euros = rng.randint(5, 400)
    return {
        "first": first,
        "full": f"{first} {rng.choice(LAST)}",
        "price": rng.choice(
            (
                f"${euros}.{cents:02d}",
                f"${euros}",
                f"€{euros},{cents:02d}",
                f"£{euros}.99",
                f"{euros}.{cents:02d} USD",
            )
        ),
        "date": rng.choice(
            (
                f"{rng.choice(MONTHS)} {rng.randint(1, 28)}",
                f"{rng.randint(1, 12)}/{rng.randint(1, 28)}",
                f"the {rng.randint(4, 20)}th",
                "Tuesday",
                f"{rng.randint(1, 28)} {rng.choice(MONTHS)}",
            )
        ),
        "phone": rng.choice(
            (
                f"({_digits(rng, 3)}) {_digits(rng, 3)}-{_digits(rng, 4)}",
                f"{_digits(rng, 3)}-{_digits(rng, 3)}-{_digits(rng, 4)}",
                f"+44 7{_digits(rng, 3)} {_digits(rng, 6)}",
            )
        ),
        "tracking": rng.choice(
            (
                f"1Z{_digits(rng, 3)}E{_digits(rng, 2)}{_digits(rng, 10)}",
                " ".join(_digits(rng, 4) for _ in range(5)),
                f"TBA{_digits(rng, 12)}",
                f"LX{_digits(rng, 9)}CN",
            )
        ),
        # Case numbers stay 5 digits or "CS-" prefixed: a "#" + 6-digit case number is an
        # order number to any reader, and the 135M teacher strips letter prefixes.
        "case": rng.choice((f"CS-{_digits(rng, 5)}", _digits(rng, 5))),
        "count": rng.choice(("second", "third", "fifth", "first")),
        "years": str(rng.randint(2, 12)),
    }


_SLOT = re.compile(r"\{(\w+)\}")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def make_ticket(
    rng: random.Random, ticket_id: str, product: str, label: str, tone: str, fmt: str
) -> Ticket:
    """One ticket: opener, maybe a follow-up line, the core sentence(s), extras, sign-off."""
    written, gold_id = order_number(rng, fmt)
    ref = rng.choice(ORDER_REFS).format(id=written)
    values = {**_distractors(rng), "product": product, "oid": written, "order": ref}
    values["Order"] = ref[0].upper() + ref[1:]

    core = rng.choice(CORE[label][tone])
    sentences = [core]
    # At most one extra from each pool, so no distractor value is mentioned twice.
    core_slots = set(_SLOT.findall(core))
    extras = [
        rng.choice([e for e in EXTRAS[pool] if not core_slots & set(_SLOT.findall(e))])
        for pool in (label, "any")
    ]
    rng.shuffle(extras)
    tags = {
        f"label:{label}",
        f"tone:{tone}",
        f"format:{fmt}",
        f"core:{label}:{tone}:{CORE[label][tone].index(core)}",
    }
    tags.update(_SLOT.findall(core))
    if rng.random() < FOLLOW_UP_RATE:
        follow_up = rng.choice(FOLLOW_UPS)
        sentences.insert(0, follow_up)
        tags.update(_SLOT.findall(follow_up))
    room = 5 - len(sentences) - len(_SENTENCE_END.findall(core))  # keep to 1-4 sentences
    n_extra = rng.randint(0, 1 if tone in ("terse", "rambling") else 2)
    for extra in extras[: max(0, min(n_extra, room))]:
        after_core = sentences.index(core) + 1  # extras refer back to it: "It was ..."
        sentences.insert(rng.randint(after_core, len(sentences)), extra)
        tags.update(_SLOT.findall(extra))
    body = " ".join(s.format(**values) for s in sentences)
    if tone == "terse" and rng.random() < 0.4:
        body = body[0].lower() + body[1:] if not body.startswith(product) else body

    opener = rng.choice(OPENERS[tone])
    closing_tpl = rng.choice(CLOSINGS[tone])
    closing = closing_tpl.format(**values)
    sep = "\n\n" if rng.random() < 0.5 else " "  # e-mail layout or one chat-style line
    text = sep.join(p for p in (opener, body, closing) if p)
    tags.update(_SLOT.findall(closing_tpl))
    tags.add("layout:email" if sep != " " else "layout:line")
    before, _, after = text.partition(written)
    tags.update(
        f"number_{where}"
        for where, part in (("before", before), ("after", after))
        if re.search(r"\d{2}", part)
    )
    return Ticket(ticket_id, text, gold_id, product, label, tone, fmt, frozenset(tags))


def generate(
    n: int,
    rng: random.Random,
    products: list[str],
    prefix: str,
    avoid: set[str] = frozenset(),
) -> list[Ticket]:
    """``n`` distinct tickets, cycling labels/tones/formats so every stratum is well filled.

    ``avoid`` holds texts and order numbers that must not appear (the other pool's).
    """
    out: list[Ticket] = []
    seen = set(avoid)
    i = 0
    while len(out) < n:
        # Every 25 draws cover each (label, tone) pair, every 15 each (label, format) pair.
        label, tone = LABELS[i % 5], TONES[(i + i // 5) % 5]
        fmt = ORDER_FORMATS[(i // 5) % 3]
        i += 1
        t = make_ticket(rng, f"{prefix}{len(out):04d}", rng.choice(products), label, tone, fmt)
        if t.text in seen or t.order_id in seen:
            continue
        seen.update((t.text, t.order_id))
        out.append(t)
    rng.shuffle(out)
    return [replace(t, id=f"{prefix}{k:04d}") for k, t in enumerate(out)]


def build(seed: int = SEED, n: int = N_TICKETS) -> tuple[list[Ticket], list[Ticket]]:
    """(tickets, shots) for one seed; the two pools share no product, text or order number."""
    names = catalogue(seed)
    shot_names, ticket_names = names[:SHOT_PRODUCTS], names[SHOT_PRODUCTS:]
    tickets = generate(n, random.Random(f"{seed}:tickets"), ticket_names, "t")
    avoid = {t.text for t in tickets} | {t.order_id for t in tickets}
    shot_rng = random.Random(f"{seed}:shots")
    candidates = generate(SHOT_CANDIDATES, shot_rng, shot_names, "s", avoid)
    shots = pick_shots(candidates, N_SHOTS)
    random.Random(f"{seed}:shot-order:{SHOT_ORDER}").shuffle(shots)
    return tickets, [replace(t, id=f"s{k:04d}") for k, t in enumerate(shots)]


def pick_shots(
    candidates: list[Ticket], k: int, want: dict[str, int] | None = None
) -> list[Ticket]:
    """``k`` shots that together show every trap, the way a prompt engineer would pick them.

    Each pick adds the most tags (label, tone, order format, distractor kinds, layout) not
    yet shown ``want[tag]`` times (default once). No brand or item repeats: a recurring one
    becomes an attractor that the 135M teacher answers for tickets about something else.
    """
    want = SHOT_WANT if want is None else want
    picked: list[Ticket] = []
    shown: Counter[str] = Counter()
    for _ in range(k):
        used = {w for t in picked for w in (_brand(t.product), _item(t.product))}
        free = [
            c
            for c in candidates
            if len(c.text) <= SHOT_MAX_CHARS and not {_brand(c.product), _item(c.product)} & used
        ]
        if not free:
            raise ValueError("not enough shot candidates with unused brands and items")

        def gain(c: Ticket) -> tuple[int, int]:
            # Most wanted tags; among equals the length nearest SHOT_CHARS (prompt ~1.5k tokens).
            new = sum(shown[tag] < want.get(tag, 1) for tag in c.tags)
            return new, -abs(len(c.text) - SHOT_CHARS)

        best = max(free, key=gain)
        picked.append(best)
        shown.update(best.tags)
    return picked


def _brand(product: str) -> str:
    return product.split()[0]


def _item(product: str) -> str:
    return next(item for item in ITEMS if product.endswith(item))


def prompt_yaml(shots: list[Ticket], seed: int) -> str:
    """The prototype prompt file (keys as ``apidistill.pipeline.template`` reads them)."""
    data = {
        "system": SYSTEM,
        "shots": [{"user": s.text, "assistant": s.gold} for s in shots],
        "template": "{input}",
    }
    header = (
        "# The teacher's prototype prompt: system instruction + 16 few-shot turns.\n"
        f"# Generated by make_tickets.py (seed {seed}) from a pool separate from tickets.jsonl;\n"
        "# edit SYSTEM / the pools there and re-run, not this file.\n"
    )
    body = yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=100)
    return header + body


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as ``|`` blocks, so the prompt file reads like the prompt."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def tickets_jsonl(tickets: list[Ticket]) -> str:
    return "".join(json.dumps(t.row(), ensure_ascii=False) + "\n" for t in tickets)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--n", type=int, default=N_TICKETS)
    ap.add_argument("--out-dir", type=Path, default=demo_data_dir())
    args = ap.parse_args(argv)
    tickets, shots = build(args.seed, args.n)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "tickets.jsonl").write_text(tickets_jsonl(tickets), encoding="utf-8")
    (args.out_dir / "prototype_prompt.yaml").write_text(
        prompt_yaml(shots, args.seed), encoding="utf-8"
    )
    print(f"wrote {len(tickets)} tickets and {len(shots)} shots to {args.out_dir}")


if __name__ == "__main__":
    main()
