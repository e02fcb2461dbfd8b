"""The look shared by the HTML report and the search page: result cards, score bars, the query card.

One stylesheet, so a result looks the same in a saved report and in the browser.
"""

# Score colour bands, from the default preset's measured scores on photos (docs/quality.md): a copy
# and its original score 0.88-0.99 (10th-90th percentile); top-10 hits that are not relevant 0.53-0.77.
HIGH, MID = 0.85, 0.7

CARDS_CSS = """
:root{--ink:#1d2330;--muted:#5b6475;--line:#dfe3ea;--bg:#f4f6f9;--accent:#2f6fdf;--high:#1a8f4c;--mid:#c98a0b;
--low:#8a93a3;--bad:#c0392b}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
.card{width:184px;flex:none;padding:10px;border:1px solid var(--line);border-radius:10px;background:#fff}
.thumb{width:162px;height:162px;display:flex;align-items:center;justify-content:center;background:#f7f8fa;
border-radius:6px;overflow:hidden}
.thumb img{max-width:160px;max-height:160px;object-fit:contain}
.querycard{border:3px solid var(--accent);background:#eef4ff;padding:8px}
.querycard .thumb{background:#fff}
.badge{display:inline-block;margin-top:8px;padding:1px 8px;border-radius:4px;background:var(--accent);color:#fff;
font-size:12px;font-weight:700;letter-spacing:.06em}
.arrow{margin-top:64px;color:var(--muted);font-size:26px}
ol.hits{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:12px}
.top{display:flex;justify-content:space-between;align-items:baseline;margin-top:8px}
.rank{font-weight:700;font-size:15px}
.chip{display:inline-block;min-width:52px;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;
text-align:center;font-variant-numeric:tabular-nums}
.bar{height:5px;background:var(--line);border-radius:3px;margin:6px 0 4px;overflow:hidden}
.bar span{display:block;height:100%}
.high .bar span{background:var(--high)}.mid .bar span{background:var(--mid)}.low .bar span{background:var(--low)}
.cat,.name{font-size:12px;color:var(--muted);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.cat{color:var(--ink)}
.lbl{color:var(--muted);font-size:11px;font-weight:400}
.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
footer{padding:0 28px 24px;color:var(--muted);font-size:12px}
"""
