//! The results as an SVG bar chart (no dependencies: the figure is a few rectangles and labels): for each
//! connection level, one bar per target, requests per second on a common scale.

use crate::Run;

const COLOURS: [&str; 6] = ["#9aa5b1", "#52606d", "#2f80ed", "#27ae60", "#f2994a", "#eb5757"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn svg(runs: &[Run], levels: &[u32]) -> String {
    let mut targets: Vec<&str> = Vec::new();
    for r in runs {
        if !targets.contains(&r.target.as_str()) {
            targets.push(&r.target);
        }
    }
    let max = runs.iter().map(|r| r.requests_per_s).fold(1.0, f64::max);
    let (left, top, height, bar, gap) = (70.0, 30.0, 260.0, 22.0, 36.0);
    let group = targets.len() as f64 * bar + gap;
    let width = (left + group * levels.len() as f64 + 20.0).max(560.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"13\">requests/s by connections (wrk, same 2-core machine)</text>\n",
        w = width,
        h = top + height + 50.0 + 16.0 * targets.len() as f64,
    );
    for step in 0..=4 {
        let v = max * f64::from(step) / 4.0;
        let y = top + height - height * f64::from(step) / 4.0;
        out += &format!(
            "<line x1=\"{left}\" x2=\"{x2}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e7eb\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            x2 = width - 10.0,
            tx = left - 6.0,
            ty = y + 4.0
        );
    }
    for (g, level) in levels.iter().enumerate() {
        let x0 = left + gap / 2.0 + g as f64 * group;
        for (t, target) in targets.iter().enumerate() {
            if let Some(r) = runs.iter().find(|r| r.target == *target && r.connections == *level) {
                let h = height * r.requests_per_s / max;
                out += &format!(
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{c}\"><title>{t}: {v:.0} req/s, p99 {p:.1} ms</title></rect>\n",
                    x = x0 + t as f64 * bar,
                    y = top + height - h,
                    w = bar - 3.0,
                    c = COLOURS[t % COLOURS.len()],
                    t = escape(target),
                    v = r.requests_per_s,
                    p = r.p99_ms
                );
            }
        }
        out += &format!(
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"middle\">{level} connections</text>\n",
            x = x0 + targets.len() as f64 * bar / 2.0,
            y = top + height + 16.0
        );
    }
    for (t, target) in targets.iter().enumerate() {
        let y = top + height + 36.0 + 16.0 * t as f64;
        out += &format!(
            "<rect x=\"{left}\" y=\"{ry:.1}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{tx}\" y=\"{y:.1}\">{name}</text>\n",
            ry = y - 9.0,
            c = COLOURS[t % COLOURS.len()],
            tx = left + 16.0,
            name = escape(target)
        );
    }
    out + "</svg>\n"
}
