"""Settings from the environment (prefix ``BILLFOLD_``) or a ``.env`` file in the working folder."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal


from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///billfold.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLFOLD_", env_file=".env", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the database. Unset: billfold.db in the working folder (SQLite).",
    )
    data_dir: Path = Field(
        Path(".billfold"), description="Where Billfold keeps files it makes: the generated secret key, outgoing mail."
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Signs tokens and encrypts secrets at rest. Unset: generated once and kept in data_dir/secret_key. "
        "Every process of one installation needs the same key.",
    )
    public_url: str = Field(
        "http://127.0.0.1:8000", description="Where people reach Billfold: links in emails, passkeys' origin."
    )
    host: str = Field("127.0.0.1", description="Address `billfold serve` listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port `billfold serve` listens on.")

    max_request_bytes: int = Field(
        1_048_576, ge=1024,
        description="The largest request body accepted, in bytes; a larger one is answered 413 before it is read whole.",
    )

    default_provider: str = Field(
        "sandbox",
        description="The payment provider (a payment_providers id) used when a request names none. "
        "If it is not an active provider, the only active provider is used.",
    )

    session_days: int = Field(30, ge=1, description="How long a sign-in lasts without use.")
    max_failed_sign_ins: int = Field(5, ge=1, description="Consecutive failed sign-ins that lock an account.")
    sign_in_attempts_per_address: int = Field(
        20, ge=1, description="Failed sign-ins one client address may make per 15 minutes."
    )
    sign_in_attempts_per_account: int = Field(
        10, ge=1, description="Failed sign-ins against one email address per 15 minutes."
    )

    smtp_host: str | None = Field(None, description="SMTP server for outgoing mail. Unset: mail goes to data_dir/mail.")
    smtp_port: int = Field(587, description="SMTP port.")
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    mail_from: str = Field("Billfold <billfold@localhost>", description="The From of every email Billfold sends.")

    tax_rates: dict[str, int] | None = Field(
        None,
        description="Tax rates by country (ISO 3166-1 alpha-2) in basis points, as JSON: "
        '{"GB": 2000, "DE": 1900}. Unset: the standard VAT/GST rates in billfold.tax.',
    )
    membership_grace_days: int = Field(
        7, ge=0, le=365,
        description="How long a membership that follows a subscription keeps granting after the paid period "
        "ends while the subscription is past due (dunning): days after the end of the period paid for.",
    )
    entitlement_cache: bool = Field(
        True,
        description="Keep entitlement checks' answers, and the API keys requests are authenticated by, in each API "
        "process, each given again only while no commit on this host has changed what it was read from (change marks "
        "in shared memory, moved after every commit). Turn off when processes on more than one host write to the "
        "database: theirs move no marks here.",
    )
    dunning_retry_days: list[int] = Field(
        [3, 5, 7],
        description="When a failed renewal is tried again, in days after the first failure (offsets, not gaps), "
        "as JSON: [3, 5, 7]. Empty: no retries; the final action follows the first failure.",
    )
    dunning_final_action: Literal["cancel", "leave_past_due"] = Field(
        "cancel",
        description="What happens when the last retry fails (or at once on a hard decline): cancel the "
        "subscription, or leave it past_due without further retries. Its invoice becomes uncollectible either way.",
    )
    trial_end_without_method: Literal["cancel"] = Field(
        "cancel", description="What happens to a trial that ends while the customer has no payment method."
    )
    order_number_prefix: str = Field("ORD", pattern=r"^[A-Z0-9]{1,10}$", description="Order numbers read PREFIX-YEAR-000001.")
    invoice_number_prefix: str = Field(
        "INV", pattern=r"^[A-Z0-9]{1,10}$", description="Invoice numbers read PREFIX-YEAR-000001 (gapless per year)."
    )
    credit_note_number_prefix: str = Field(
        "CN", pattern=r"^[A-Z0-9]{1,10}$", description="Credit note numbers read PREFIX-YEAR-000001 (their own gapless series)."
    )

    seller_name: str = Field("Billfold Demo Shop Ltd", description="The seller named on invoices.")
    seller_address: str = Field(
        "1 Example Street\nLondon EC1A 1AA\nUnited Kingdom",
        description="The seller's address on invoices, one line per line (newlines, or \\n in the environment).",
    )
    seller_tax_id: str | None = Field("GB000000000", description="The seller's VAT/tax number on invoices; empty: none shown.")

    api_threads: int = Field(
        16, ge=1, le=256,
        description="Requests one API process works on at once (the thread pool of its endpoints). Each "
        "may use two database connections at a time, so the connection pool holds up to twice this many.",
    )
    provider_calls_at_once: int = Field(
        50, ge=1, le=256,
        description="Calls to payment providers one sweep of a batch (renewals, retries, trial ends) makes at "
        "once, on a pool of this many threads per process that holds no database connection. The default is "
        "a sweep's batch, so a batch of 50 at 250 ms a call waits about one round trip, not 50. 1: one call "
        "after another.",
    )
    analytics_nightly: bool = Field(
        True,
        description="The worker takes yesterday's analytics snapshot each night (and the days it missed, up to 31 "
        "back). Off: snapshots are taken only by `billfold analytics snapshot|backfill` and the API's on-demand "
        "days.",
    )
    sandbox: bool = Field(
        False,
        description="Sandbox mode: the billing clock may be moved forward (`billfold clock advance 30d`, "
        "POST /v1/admin/clock/advance) for the whole system, to simulate renewals, retries and expiry. "
        "Off by default; never turn it on for a shop that takes real money.",
    )
    sandbox_latency_ms: int = Field(
        0, ge=0, le=60_000,
        description="Milliseconds every call to a sandbox provider waits, as a remote provider's network would "
        "(real time, outside every lock), for benches and tests; a provider's own config `latency_ms` wins.",
    )
    sandbox_latency_jitter_ms: int = Field(
        0, ge=0, le=60_000,
        description="Up to this many milliseconds more, uniformly at random, on each sandbox call (config "
        "`latency_jitter_ms` wins): 200 and 400 give a real provider's 200-600 ms.",
    )
    worker: Literal["embedded", "off", "external"] | None = Field(
        None,
        description="Where the background sweeps run. embedded: in a thread of `billfold serve`; external: "
        "in `billfold worker` processes; off: nowhere (for tests). Unset: embedded on SQLite without a broker, "
        "external otherwise.",
    )
    webhook_targets_allow: list[Literal["loopback", "private", "link_local"]] = Field(
        [],
        description="Webhooks out: the kinds of address an endpoint may resolve to besides public ones, as JSON: "
        '["loopback"] (127.0.0.0/8, ::1), "private" (10/8, 172.16/12, 192.168/16, fc00::/7), "link_local" '
        "(169.254/16, fe80::/10, where cloud metadata services live). Empty: public addresses only. "
        "Multicast, reserved and unspecified addresses are always refused.",
    )
    worker_tick: float = Field(5.0, gt=0, description="Seconds between the worker's rounds of due sweeps.")
    worker_sweeps_at_once: int = Field(
        4, ge=1, le=64,
        description="Batches of one backlog (renewals, trial ends, dunning retries) a worker process works on at "
        "once, each claimed with FOR UPDATE SKIP LOCKED: one batch's provider calls wait while another's rows are "
        "written. Always 1 on SQLite (one writer).",
    )
    broker_url: str | None = Field(
        None,
        description="Dramatiq broker for background work: redis://host:6379/0 or amqp://user:pass@host:5672/. "
        "Unset: sweeps run in the worker process itself, with no broker.",
    )
    broker_queue: str = Field(
        "billfold", pattern=r"^[A-Za-z0-9_.-]{1,100}$", description="The Dramatiq queue Billfold's messages go to."
    )

    @property
    def worker_mode(self) -> str:
        """The ``worker`` setting, or its default for this installation."""
        if self.worker is not None:
            return self.worker
        if self.broker_url is None and self.database_url.startswith("sqlite"):
            return "embedded"
        return "external"

    @property
    def cookies_secure(self) -> bool:
        """Session cookies carry the Secure flag whenever Billfold is reached over HTTPS."""
        return self.public_url.startswith("https://")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
