"""Template values for tests that store memes without rendering them."""

from __future__ import annotations

from common.template import Box, CatalogImage, Template


def catalog_template(slug: str = "drake") -> Template:
    """A catalog-style template named `slug` (its image file need not exist: nothing renders it)."""
    return Template(
        slug=slug,
        name=slug.replace("-", " ").title(),
        imgflip_id=1,
        dataset_name=slug.title(),
        image=CatalogImage(f"{slug}.jpg"),
        width=600,
        height=600,
        aliases=(),
        has_data=True,
        boxes=(Box(x=0.0, y=0.0, w=1.0, h=0.5), Box(x=0.0, y=0.5, w=1.0, h=0.5)),
    )
