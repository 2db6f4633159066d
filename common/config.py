"""Configuration: one TOML file read into typed dataclasses, then passed down.

Nothing else in the project reads the environment or a config file: the CLI calls
`load_config` once and hands the pieces to whatever needs them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration problem, worded for the person editing the file."""


@dataclass
class PathsConfig:
    # Relative paths are resolved against the project root, so the defaults work
    # from any working directory.
    shared: Path = Path("../shared")
    dataset: Path | None = None  # default: <shared>/data/imgflip575k/dataset
    template_images: Path | None = None  # default: <shared>/data/template-images
    catalog: Path = Path("data/templates.toml")
    cache_dir: Path = Path(".cache")
    output_dir: Path = Path("memes")


@dataclass
class ModelConfig:
    checkpoint: Path = Path("data/models/memebot-transformer.pt")
    # Speculative decoding: guesses from this n-gram table are checked several characters per
    # pass; the captions are the same, only faster (model/draft.py). Off, or no file: plain steps.
    speculative: bool = True
    draft: Path = Path("data/models/memebot-draft.npz")
    # The words decoding may spell (model/lexicon.py; `memebot lexicon` builds it), used by
    # requests with [generation] lexicon on. No file: decoding without the lexicon.
    lexicon: Path = Path("data/models/memebot-lexicon.txt.gz")
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 2
    quantize: bool = False
    # fp16 weights multiplied in fp32 by FBGEMM (CPU with AVX2): ~1.4x faster decoding, same
    # accuracy on `memebot eval --half-weights`. Ignored where unavailable and on GPUs.
    half_weights: bool = True
    # The fused decoding kernel (model/fused.py): all transformer blocks of a CPU decoding pass
    # in one C++ call, ~3x faster at batch 1. Compiled on first use (about a minute, cached
    # under paths.cache_dir); without a compiler, the plain PyTorch path.
    fused_kernel: bool = True
    compile: bool = False
    max_batch: int = 64
    # 0: an idle worker starts at once; under load, requests that queue while a batch runs
    # form the next one. A wait added its full length to every lone request's latency and
    # gave no more captions/s at concurrency 8 or 32 (same-process A/B, fused kernel).
    batch_wait_ms: float = 0.0
    queue_size: int = 512
    timeout_s: float = 20.0
    # The model service's URL (`memebot serve-model` prints it), e.g. "http://10.0.0.5:8000":
    # this process then loads no model and sends its requests there (model/remote.py), with the
    # same timeout_s and queue_size. Empty: decode in this process, with the settings above.
    endpoint: str = ""


@dataclass
class GenerationConfig:
    method: str = "sample"  # greedy | sample | beam
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 0.95
    beam_width: int = 3
    max_length: int = 120
    # Words only from the lexicon ([model] lexicon), the user's own words, numbers and the
    # template's name: no made-up words. A server setting.
    lexicon: bool = True
    # No word 3-gram twice in a caption, no box twice, no character more than 8 times in a row
    # (inside decoding, every method; model/decoding.py).
    block_repeats: bool = True
    # Sampling: decode this many candidates together, answer with the best ranked (below) and
    # keep the rest for 🔁. 1 = off. A server setting.
    best_of: int = 8
    # Best of N ranks by log-probability / length**rank_length_power. 1 is per symbol; three
    # blind readers took ours for the person's in 20 of 144 pairs at 0.5, in 8 at 1 (README,
    # Captions).
    rank_length_power: float = 0.5


@dataclass
class RenderConfig:
    max_side: int = 800
    uppercase: bool = True
    fallback_fonts: list[Path] = field(default_factory=list)


@dataclass
class StorageConfig:
    database: Path = Path("memebot.db")  # the SQLite file, used unless `url` is set
    # A PostgreSQL database instead of the file: "postgresql://user:password@host:5432/memebot".
    # Not in repr: the password. Best set as MEMEBOT_DATABASE_URL, to keep it out of files.
    url: str = field(default="", repr=False)
    # Key for hashing user ids; the environment variable wins so it can stay out of files.
    user_hash_key: str = field(default="memebot-default-key-change-me", repr=False)
    # A user's own picture is stored as its SHA-256 only; a chat's admins may turn keeping the
    # picture itself on (the keep_pictures setting), and this is the default for every chat.
    keep_pictures: bool = False


@dataclass
class LimitsConfig:
    user_rate_per_minute: float = 6.0
    user_burst: int = 3
    chat_rate_per_minute: float = 30.0
    chat_burst: int = 10
    max_prefix_chars: int = 150
    max_caption_chars: int = 500


# Words better-profanity's list bans that are everyday meme language (insults, exclamations,
# drinks, body parts in a medical sense): refusing "stupid" or "hell" would make the bot useless.
EVERYDAY_WORDS = (
    "god hell damn crap kill murder stupid ugly fat moron dummy dopey doofus weirdo jerk nimrod"
    " ninny prude drunk vodka rum pot weed hemp stoned toke lmao lmfao omg wtf stfu gtfo fubar"
    " foobar suck sucked screw pee poop fart potty gay gays queer organ revue strip stroke thrust"
    " seaman seamen maxi pawn slave sniper virgin gringo hiv junkie junky leper napalm opium meth"
    " heroin facial flange hookah hump loin loins lust racy sissy steamy tramp trashy urinal urine"
    " uterus uzi valium viagra vomit vulgar womb wedgie whiz willy herpes homey nude naked hooch"
    " paddy pasty pastie tinkle undies unwed vixen wad scum thug ovary ovum ovums menses sadist"
    " sadism snuff souse soused erect lech dink knob nob rump tush teste testes testis spunk sleaze"
    " sleazy toots woody xx"
).split()


@dataclass
class FilterConfig:
    enabled: bool = True
    extra_words: list[str] = field(default_factory=list)
    # Taken off the maintained list (whole words; extra_words still wins over this).
    allowed_words: list[str] = field(default_factory=lambda: list(EVERYDAY_WORDS))


@dataclass
class TelegramConfig:
    enabled: bool = False
    api_url: str = "https://api.telegram.org/bot"
    file_url: str = "https://api.telegram.org/file/bot"
    token: str = field(default="", repr=False)
    poll_timeout_s: float = 30.0
    # Inline mode (@bot drake ... in any chat) answers with photos Telegram already has: each
    # candidate is uploaded to this chat first (the bot must be able to post there: a private
    # channel with the bot as admin, or your own chat with the bot). 0 = inline mode off.
    inline_cache_chat: int = 0
    # Webhook mode instead of polling, for several processes behind one public address: the
    # HTTPS URL Telegram posts updates to (a reverse proxy ends TLS and spreads the requests over
    # the processes), the host:port this process's own HTTP server listens on for them (the
    # URL's path is served there too), and the secret Telegram sends in every request
    # (X-Telegram-Bot-Api-Secret-Token; anything without it gets 403). Empty URL = polling.
    webhook_url: str = ""
    webhook_listen: str = "127.0.0.1:8443"
    # Not in repr: a secret. Best set as TELEGRAM_WEBHOOK_SECRET.
    webhook_secret: str = field(default="", repr=False)

    @property
    def webhook_address(self) -> tuple[str, int]:
        """`webhook_listen` as (host, port); "[::]:8443" gives ("::", 8443)."""
        host, _, port = self.webhook_listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass
class DiscordConfig:
    enabled: bool = False
    token: str = field(default="", repr=False)
    test_guild: int = 0  # sync commands to this guild only (instant) when non-zero
    # Sharding, for many guilds or many processes: Discord sends each guild's events on shard
    # (guild_id >> 22) % shard_count. 0 = one unsharded connection. With a count, this process
    # runs `shard_ids` (all of them when empty), each on its own gateway connection; processes
    # that split the ids between them serve every guild once, on one shared database.
    shard_count: int = 0
    shard_ids: list[int] = field(default_factory=list)


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    root: Path = PROJECT_ROOT

    def resolve(self, path: Path) -> Path:
        """A configured path made absolute against the project root."""
        path = Path(os.path.expanduser(path))
        return path if path.is_absolute() else (self.root / path).resolve()

    @property
    def dataset_dir(self) -> Path:
        p = self.paths.dataset or self.paths.shared / "data/imgflip575k/dataset"
        return self.resolve(p)

    @property
    def template_images_dir(self) -> Path:
        p = self.paths.template_images or self.paths.shared / "data/template-images"
        return self.resolve(p)

    @property
    def catalog_path(self) -> Path:
        return self.resolve(self.paths.catalog)

    @property
    def cache_dir(self) -> Path:
        return self.resolve(self.paths.cache_dir)

    @property
    def checkpoint_path(self) -> Path:
        return self.resolve(self.model.checkpoint)

    @property
    def draft_path(self) -> Path | None:
        return self.resolve(self.model.draft) if self.model.speculative else None

    @property
    def lexicon_path(self) -> Path:
        return self.resolve(self.model.lexicon)

    @property
    def kernel_dir(self) -> Path | None:
        """Where the fused decoding kernel is built, if it is wanted."""
        return self.cache_dir / "kernels" if self.model.fused_kernel else None

    @property
    def database_path(self) -> Path:
        """The SQLite file (what `database_location` is unless [storage] url is set)."""
        return self.resolve(self.storage.database)

    @property
    def database_location(self) -> Path | str:
        """Where storage keeps its data: the PostgreSQL URL when one is set, else the SQLite file."""
        return self.storage.url or self.database_path


# Environment variables that override a setting: name -> (section, key).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "TELEGRAM_TOKEN": ("telegram", "token"),
    "DISCORD_TOKEN": ("discord", "token"),
    "MEMEBOT_USER_HASH_KEY": ("storage", "user_hash_key"),
    "MEMEBOT_SHARED": ("paths", "shared"),
    "MEMEBOT_DATASET": ("paths", "dataset"),
    "MEMEBOT_TEMPLATE_IMAGES": ("paths", "template_images"),
    "MEMEBOT_CHECKPOINT": ("model", "checkpoint"),
    "MEMEBOT_DEVICE": ("model", "device"),
    "MEMEBOT_MODEL_ENDPOINT": ("model", "endpoint"),
    "MEMEBOT_DATABASE": ("storage", "database"),
    "MEMEBOT_DATABASE_URL": ("storage", "url"),
    "MEMEBOT_CACHE_DIR": ("paths", "cache_dir"),
    "TELEGRAM_API_URL": ("telegram", "api_url"),
    "TELEGRAM_WEBHOOK_SECRET": ("telegram", "webhook_secret"),
    "TELEGRAM_WEBHOOK_LISTEN": ("telegram", "webhook_listen"),  # each process its own port
    # One config file for every process; each is told its own shards: DISCORD_SHARD_IDS="[0, 1]".
    "DISCORD_SHARD_COUNT": ("discord", "shard_count"),
    "DISCORD_SHARD_IDS": ("discord", "shard_ids"),
}


def coerce(value: Any, annotation: Any, where: str, error: type[Exception] = ConfigError) -> Any:
    """Check a value read from TOML or JSON against a dataclass field's type and convert it (a
    list to a tuple where the field is one); raises `error` worded with `where` otherwise. The
    config's sections and the model service's requests (model/wire.py) are both read with it."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"Path": Path, "Any": Any})  # dataclass string annotations
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return coerce(value, args[0], where, error)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise error(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item = typing.get_args(annotation)[0]  # list[T] or tuple[T, ...]
        items = [coerce(v, item, f"{where}[{i}]", error) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if annotation is Path:
        if not isinstance(value, str):
            raise error(f"{where}: expected a path string, got {type(value).__name__} {value!r}")
        return Path(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise error(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{where}: expected a whole number, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise error(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise error(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


def _from_env_string(raw: str, annotation: Any, where: str) -> Any:
    """Environment variables are strings; parse them as TOML values where the field is not text."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"Path": Path, "Any": Any})
    if annotation in (str, Path) or str in typing.get_args(annotation) or Path in typing.get_args(annotation):
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: cannot parse {raw!r}") from exc


def _build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"[{section}] {key}: unknown setting (known: {known})")
        where = f"[{section}] {key}"
        kwargs[key] = coerce(value, fields[key].type, where)
    return cls(**kwargs)


def _validate(config: Config) -> None:
    checks = [
        (config.model.threads >= 1, "[model] threads: must be at least 1"),
        (config.model.max_batch >= 1, "[model] max_batch: must be at least 1"),
        (config.model.queue_size >= 1, "[model] queue_size: must be at least 1"),
        (config.model.timeout_s > 0, "[model] timeout_s: must be positive"),
        (config.model.batch_wait_ms >= 0, "[model] batch_wait_ms: must not be negative"),
        (
            not config.model.endpoint or config.model.endpoint.startswith(("http://", "https://")),
            f"[model] endpoint: must be an http:// or https:// URL, got {config.model.endpoint!r}",
        ),
        (
            config.model.device == "auto"
            or config.model.device == "cpu"
            or config.model.device.startswith("cuda"),
            f"[model] device: must be auto, cpu or cuda[:N], got {config.model.device!r}",
        ),
        (0 < config.generation.top_p <= 1, "[generation] top_p: must be in (0, 1]"),
        (config.generation.top_k >= 0, "[generation] top_k: must not be negative"),
        (
            0 <= config.generation.rank_length_power <= 1,
            "[generation] rank_length_power: must be between 0 and 1",
        ),
        (config.render.max_side >= 64, "[render] max_side: must be at least 64"),
        (
            # The URL itself is not repeated: it may hold a password.
            not config.storage.url or config.storage.url.startswith(("postgresql://", "postgres://")),
            "[storage] url: must start with postgresql:// (for a SQLite file, set [storage] database)",
        ),
        (config.limits.user_rate_per_minute > 0, "[limits] user_rate_per_minute: must be positive"),
        (config.limits.chat_rate_per_minute > 0, "[limits] chat_rate_per_minute: must be positive"),
        (config.limits.user_burst >= 1, "[limits] user_burst: must be at least 1"),
        (config.limits.chat_burst >= 1, "[limits] chat_burst: must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _validate_shards(config.discord)
    _validate_webhook(config.telegram)


# What Telegram accepts as a webhook's secret token (setWebhook's secret_token).
WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


def _validate_webhook(telegram: TelegramConfig) -> None:
    host, _, port = telegram.webhook_listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            "[telegram] webhook_listen: expected host:port, e.g. 127.0.0.1:8443, "
            f"got {telegram.webhook_listen!r}"
        )
    if not telegram.webhook_url:
        return
    if not telegram.webhook_url.startswith("https://"):
        raise ConfigError("[telegram] webhook_url: Telegram posts only to https:// URLs")
    # The secret itself is never repeated in a message.
    if not telegram.webhook_secret:
        raise ConfigError(
            "[telegram] webhook_url is set but no secret: set TELEGRAM_WEBHOOK_SECRET (1-256 of A-Z a-z "
            "0-9 _ -), so that only Telegram can send the bot updates"
        )
    if not WEBHOOK_SECRET.fullmatch(telegram.webhook_secret):
        raise ConfigError(
            "[telegram] webhook_secret: Telegram takes 1-256 characters of A-Z a-z 0-9 _ - only"
        )


def _validate_shards(discord: DiscordConfig) -> None:
    count, ids = discord.shard_count, discord.shard_ids
    if count < 0:
        raise ConfigError("[discord] shard_count: must not be negative (0: no sharding)")
    if ids and not count:
        raise ConfigError("[discord] shard_ids: needs [discord] shard_count, the total over every process")
    wrong = [i for i in ids if not 0 <= i < count]
    if wrong:
        raise ConfigError(
            f"[discord] shard_ids: {wrong} not in 0..{count - 1} (shard ids are below shard_count)"
        )
    if len(set(ids)) != len(ids):
        raise ConfigError(f"[discord] shard_ids: {ids} names a shard twice")


def load_config(
    path: Path | str | None = None,
    env: typing.Mapping[str, str] | None = None,
    root: Path | None = None,
) -> Config:
    """Read the config file (if any), apply environment overrides, validate.

    `path=None` means: use `config.toml` in the project root when it exists, else the
    built-in defaults. An explicit path that does not exist is an error.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    root = root or PROJECT_ROOT
    if path is None:
        candidate = root / "config.toml"
        path = candidate if candidate.exists() else None
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist (copy config.example.toml to start one)")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc

    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "root"}
    for name, (section, key) in ENV_OVERRIDES.items():
        if env.get(name):
            where = f"environment variable {name}"
            section_cls = typing.get_type_hints(Config)[section]
            annotation = {f.name: f.type for f in dataclasses.fields(section_cls)}[key]
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                raise ConfigError(f"[{section}]: expected a table")
            data[section][key] = _from_env_string(env[name], annotation, where)

    built: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for name, value in data.items():
        if name not in sections:
            known = ", ".join(sorted(sections))
            raise ConfigError(f"[{name}]: unknown section (known: {known})")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}]: expected a table of settings, got {value!r}")
        built[name] = _build_section(hints[name], value, name)
    config = Config(**built, root=root)
    _validate(config)
    return config
