"""The live view: a run log in the browser, while the run writes it or long after.

- `model`, `conductance`: what the page shows, as pure functions of what `RunLog` returns;
- `follower`: `LogFollower`, which re-reads the log at each commit into a `PageModel`;
- `page`: the Bokeh document of one browser session;
- `server`: `WatchServer`, the Bokeh server behind its access gate (loopback, or a token);
- `live`: `pcm-hil train --watch`, the view of the run being trained, with Stop;
- `browser`: headless Chromium, for the tests, the benchmark and the screenshots.

Bokeh (the `watch` extra) is imported by `page` and `server` only.
"""
