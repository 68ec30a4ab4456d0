"""Varied-length English texts for fidelity and end-to-end tests, deterministic for a seed."""

from __future__ import annotations

import random

SENTENCES = [
    "The battery lasts two full days, which I did not expect from a phone this thin.",
    "Service was slow and the soup arrived cold.",
    "I loved it.",
    "Absolutely terrible customer support; they hung up on me twice.",
    "The plot drags in the middle, but the last twenty minutes are worth the wait.",
    "Crème brûlée was perfect, the café itself a little noisy.",
    "Would not buy again.",
    "Setup took five minutes and the instructions were clear enough for my grandmother.",
    "The screen scratches if you so much as look at it.",
    "Honestly the best pizza in town, and I have tried them all.",
    "It broke after a week and the refund took a month.",
    "Great value for the price, though the strap feels cheap.",
    "The actors clearly had fun, and so did we.",
    "Shipping was fast.",
    "Too loud, too bright, too expensive.",
    "My kids watched it three times in a row without complaining once.",
    "The hotel room smelled of smoke even though it was supposed to be non-smoking.",
    "Naïve, charming and a bit too long — still recommended.",
    "Staff were friendly and remembered our names on the second night.",
    "The firmware update fixed the Bluetooth drops that plagued the first version.",
    "I am not sure what the critics saw in this film.",
    "Solid build, responsive keys, and the backlight is even across the board.",
    "Delivery driver left the package in the rain.",
    "これは素晴らしい製品です。",
    "The sequel improves on the original in every way that matters 👍",
    "Portions were small and the bill was large.",
    "A quiet, thoughtful book that stayed with me for weeks.",
    "The app crashes every time I open the settings page.",
    "Five stars for the pastry chef, one star for the parking.",
    "It does exactly what it says on the box, nothing more and nothing less.",
]


def texts(count: int, seed: int = 0, max_sentences: int = 60) -> list[str]:
    """``count`` texts of 1 to ``max_sentences`` sentences: from a few tokens to past 512."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        size = min(max_sentences, int(rng.paretovariate(0.9)))
        out.append(" ".join(rng.choice(SENTENCES) for _ in range(size)))
    return out
