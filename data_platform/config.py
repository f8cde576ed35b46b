"""Platform settings, read from the environment when asked for (never at import).

The variables are part of the public interface (PRODUCT.md, "Configuration"):
every one is optional on the embedded default.
"""

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    storage_url: str
    catalog_url: str

    @classmethod
    def from_env(cls, environ: "os._Environ[str] | dict[str, str] | None" = None) -> "Settings":
        env = os.environ if environ is None else environ
        home = Path(env.get("DATA_PLATFORM_HOME") or "./.data_platform").resolve()
        storage_url = env.get("DATA_PLATFORM_STORAGE_URL") or str(home / "objects")
        catalog_url = env.get("DATA_PLATFORM_CATALOG_URL") or f"sqlite:///{home / 'catalog.db'}"
        return cls(home=home, storage_url=storage_url, catalog_url=catalog_url)

