"""The study report in three parts, on Optuna's pattern: `data` gathers what the report shows from
finished studies (pure), `figures` draws plotly figures from that data, and `page` lays them out
as one offline HTML page and holds the only I/O (opening studies, reading the files beside them,
writing the page)."""
