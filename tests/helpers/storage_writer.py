"""Writes memes and ratings into a database until killed, printing each committed meme id.

tests/test_storage.py runs this in a subprocess and SIGKILLs it mid-write, then checks
that every printed (committed) meme survived and every row present is complete.
Usage: python storage_writer.py DATABASE
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bot.storage import NewMeme, Storage
from common.template import Box, CatalogImage, Template

KEY = "kill-test-key"


# Built here, not imported from tests/: this file runs as a script in a subprocess.
DRAKE = Template(
    slug="drake",
    name="Drake",
    imgflip_id=1,
    dataset_name="Drake",
    image=CatalogImage("drake.jpg"),
    width=600,
    height=600,
    aliases=(),
    has_data=True,
    boxes=(Box(x=0.0, y=0.0, w=1.0, h=0.5), Box(x=0.0, y=0.5, w=1.0, h=0.5)),
)


def meme_for(i: int) -> NewMeme:
    # Boxes of a few KiB spill into overflow pages, so a killed write is a multi-page write.
    return NewMeme(
        platform="telegram",
        chat_id="kill-chat",
        user_id=f"writer-{i % 7}",
        template=DRAKE,
        prefix=str(i),
        boxes=[f"top {i} " + "x" * (500 + 37 * (i % 60)), f"bottom {i}"],
        method="sample",
        params={"i": i, "temperature": 0.8},
        model_id="kill-test-model",
    )


async def write_forever(path: Path) -> None:
    storage = await Storage.open(path, KEY)
    i = 0
    while True:
        meme_id = await storage.record_meme(meme_for(i))
        await storage.rate(meme_id, "telegram", f"voter-{i}", 1)
        print(meme_id, flush=True)
        i += 1


if __name__ == "__main__":
    asyncio.run(write_forever(Path(sys.argv[1])))
