"""Reports: `compare`'s report (Markdown, HTML, CSV, JSON; en and zh)."""
