"""The study report in three parts: data gathered from studies (pure), plotly figures built from
that data, and the page written to disk (the only I/O)."""
