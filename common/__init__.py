"""What every layer uses: configuration, the template catalog and the `Template` value, the
content filter, the ratings-export record. Imports nothing from bot/, model/, training/ or cli/."""
