"""Cut ``sample_data/banking77_20/`` from the shared BANKING77 copy (see ``sample_data/README.md``).

20 intents (chosen by hand: common ones plus confusable pairs), the first 60 train rows of each in file
order, and every original test row of those intents. Deterministic: running it again writes the same files.

Usage: ``python sample_data/make_sample.py [path/to/banking77]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

INTENTS = (
    "activate_my_card", "age_limit", "apple_pay_or_google_pay", "card_arrival", "card_delivery_estimate",
    "card_payment_wrong_exchange_rate", "cash_withdrawal_charge", "change_pin", "declined_card_payment",
    "exchange_rate", "lost_or_stolen_card", "pending_top_up", "pending_transfer", "pin_blocked",
    "terminate_account", "top_up_failed", "top_up_reverted", "transfer_fee_charged", "transfer_timing",
    "verify_my_identity",
)
TRAIN_PER_INTENT = 60
HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent / "shared" / "data" / "banking77"


def cut(source: Path, out: Path) -> dict[str, int]:
    """Write train.csv and test.csv under ``out``; returns rows per split."""
    out.mkdir(parents=True, exist_ok=True)
    train = pd.read_csv(source / "train.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(source / "test.csv", dtype=str, keep_default_na=False)
    missing = set(INTENTS) - set(train["label"])
    if missing:
        raise SystemExit(f"intents not in {source}: {sorted(missing)}")
    train = train[train["label"].isin(INTENTS)].groupby("label", sort=False).head(TRAIN_PER_INTENT)
    test = test[test["label"].isin(INTENTS)]
    for name, frame in (("train", train), ("test", test)):
        frame.to_csv(out / f"{name}.csv", index=False, lineterminator="\n")
    return {"train": len(train), "test": len(test)}


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE
    print(cut(source, HERE / "banking77_20"))
