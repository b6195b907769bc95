//! The HTML the binary serves itself: a stream index and a WHEP player (no CDN, no build step).

use crate::dataplane::subsystem::StreamInfo;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn index(streams: &[StreamInfo]) -> String {
    let rows: String = streams
        .iter()
        .map(|s| {
            let id = escape(&s.id);
            format!(
                "<tr><td>{id}</td><td>{state}</td><td>{live}</td><td>{subs}</td>\
                 <td><a href=\"/play/{id}\">watch</a></td><td><code>{path}</code></td></tr>",
                state = s.state,
                live = if s.live { "live" } else { "no media" },
                subs = s.subscribers,
                path = escape(&s.whep_path),
            )
        })
        .collect();
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>webrtc-egress</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .8em}}</style>
</head><body><h1>webrtc-egress</h1>
<table><tr><th>process</th><th>state</th><th>media</th><th>subscribers</th><th></th><th>WHEP</th></tr>{rows}</table>
</body></html>"#
    )
}

pub fn player(process: &str) -> String {
    PLAYER_HTML.replace("__PROCESS__", &escape(process))
}

const PLAYER_HTML: &str = include_str!("player.html");
