"""Buzz accounts: balances per currency, debits split across currencies, refunds as credits."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.emulator.config import EmulatorConfig

DEFAULT_ORDER = ("blue", "green", "yellow")


def account_id(token: str) -> str:
    """The account name a bearer token maps to; never the token itself (safe to log and show)."""
    return "acct-" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


@dataclass
class Account:
    """One account's balances and the totals it was charged and refunded, in Buzz."""

    balance: dict[str, int]
    charged_buzz: int = 0
    refunded_buzz: int = 0
    workflows: int = 0


@dataclass
class Ledger:
    """Every account the emulator knows, keyed by `account_id(token)`."""

    config: EmulatorConfig
    accounts: dict[str, Account] = field(default_factory=dict)
    _next_tx: int = 0

    def open(self, token: str) -> str:
        """The account id of `token`, opening it with its configured balance on first sight."""
        acct = account_id(token)
        if acct not in self.accounts:
            self.accounts[acct] = Account(balance=self.config.balance_for(token))
        return acct

    def plan(self, acct: str, price_buzz: int, currencies: Sequence[str]) -> tuple[list[Any], bool]:
        """The debit entries that would pay `price_buzz`, and whether the account falls short.

        `currencies` restricts and orders the accounts; empty means blue, then green, then yellow.
        """
        balance = self.accounts[acct].balance
        order = [c for c in (currencies or DEFAULT_ORDER)]
        remaining = price_buzz
        entries: list[Any] = []
        for currency in order:
            take = min(remaining, balance.get(currency, 0))
            if take > 0:
                entries.append({"type": "debit", "amount": take, "accountType": currency})
                remaining -= take
        if remaining > 0 and not entries:
            entries.append({"type": "debit", "amount": remaining, "accountType": order[0]})
        elif remaining > 0:
            entries[-1] = {**entries[-1], "amount": entries[-1]["amount"] + remaining}
        return entries, remaining > 0

    def available(self, acct: str, currencies: Sequence[str]) -> int:
        """The Buzz the account can spend in the allowed currencies."""
        balance = self.accounts[acct].balance
        return sum(balance.get(c, 0) for c in (currencies or DEFAULT_ORDER))

    def debit(self, acct: str, entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply planned debits; returns them with transaction ids."""
        account = self.accounts[acct]
        posted = []
        for entry in entries:
            account.balance[entry["accountType"]] -= entry["amount"]
            account.charged_buzz += entry["amount"]
            posted.append({**entry, "id": self._tx_id()})
        return posted

    def refund(self, acct: str, debits: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """A credit matching each debit, back to the currency it came from."""
        account = self.accounts[acct]
        credits = []
        for entry in debits:
            if entry["type"] != "debit" or entry["amount"] == 0:
                continue
            account.balance[entry["accountType"]] += entry["amount"]
            account.refunded_buzz += entry["amount"]
            credits.append(
                {
                    "type": "credit",
                    "amount": entry["amount"],
                    "accountType": entry["accountType"],
                    "id": self._tx_id(),
                }
            )
        return credits

    def _tx_id(self) -> str:
        self._next_tx += 1
        return f"tx-{self._next_tx:08d}"

    def totals(self) -> dict[str, int]:
        """Buzz charged and refunded over all accounts, and the net."""
        charged = sum(a.charged_buzz for a in self.accounts.values())
        refunded = sum(a.refunded_buzz for a in self.accounts.values())
        return {"charged_buzz": charged, "refunded_buzz": refunded, "net_buzz": charged - refunded}
