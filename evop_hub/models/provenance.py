"""What a source's record cites beyond its name: the exact commit its weights came from and the license
terms its card states, both best effort (a lookup never stops a load)."""

from __future__ import annotations

from pathlib import Path

LICENSE_KEYS = ("license", "license_name", "license_link")  # the card metadata that states a model's terms


def hub_commit(hub_id: str, revision: str | None) -> str | None:
    """The commit the weights were loaded from, so the record pins them: the Hub cache keeps each
    commit's files under ``snapshots/<commit>/``, and ``from_pretrained`` has just put config.json there."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(hub_id, "config.json", revision=revision, local_files_only=True)).parent.name
    except Exception:  # noqa: BLE001 - not found in the cache: the record keeps the revision as asked
        return None


def card_license(
    hub_id: str | None, revision: str | None, path: str | Path, token: str | bool | None
) -> dict[str, str | None]:
    """The license keys of the base's card metadata, from its Hub repo (``hub_id``) or a local README.md
    in ``path``; empty offline. A license of type `other` is meaningless without its name and link, so all
    three are kept."""
    from huggingface_hub import HfApi, ModelCard, is_offline_mode

    readme = Path(path) / "README.md"
    try:
        if hub_id:
            if is_offline_mode():
                return {}
            data = HfApi().model_info(hub_id, revision=revision, token=token, timeout=10).card_data
        else:
            data = ModelCard.load(readme).data if readme.is_file() else None
    except Exception:  # noqa: BLE001 - a license lookup must never stop a load
        return {}
    return {key: getattr(data, key, None) for key in LICENSE_KEYS} if data is not None else {}
