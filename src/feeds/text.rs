//! Reducing HTML to safe plain text: no markup, no scripts, no tracking pixels
//! reach a digest; entities are decoded and whitespace collapsed.

/// Elements whose content is dropped with them.
const DROPPED: [&str; 6] = ["script", "style", "head", "noscript", "iframe", "template"];
/// Elements that end a paragraph.
const BREAKS: [&str; 10] = [
    "p",
    "br",
    "div",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "tr",
    "blockquote",
];

/// The text of an HTML fragment; paragraphs separated by blank lines.
pub fn html_to_text(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        out.push_str(&decode_entities(&rest[..start]));
        rest = &rest[start..];
        // Only `<` followed by a name, `/` or `!` opens a tag; "a < b" is text.
        if !rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '!') {
            out.push('<');
            rest = &rest[1..];
            continue;
        }
        let Some(end) = rest.find('>') else {
            rest = "";
            break;
        };
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if tag.starts_with("!--") {
            // A comment may contain '>': skip to its real end.
            // A comment that never ends runs to the end of the input.
            rest = rest.find("-->").map_or("", |close| &rest[close + 3..]);
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if !tag.starts_with('/') && DROPPED.contains(&name.as_str()) {
            let close = format!("</{name}");
            // Searched in the lower-cased input made once (same byte offsets), so
            // many dropped elements cost linear time, not quadratic.
            let offset = html.len() - rest.len();
            match lower[offset..].find(&close) {
                Some(at) => {
                    rest = &rest[at..];
                    rest = rest.find('>').map_or("", |e| &rest[e + 1..]);
                }
                None => rest = "",
            }
            continue;
        }
        if BREAKS.contains(&name.as_str()) {
            out.push_str("\n\n");
        }
    }
    out.push_str(&decode_entities(rest));
    collapse(&out.replace('\0', ""))
}

/// Collapses runs of spaces inside paragraphs and keeps single blank lines.
fn collapse(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // An entity is short: look for its `;` among the next few characters (by
        // characters, not bytes: the text may be anything).
        let Some(semi) = rest
            .char_indices()
            .take(12)
            .find(|(_, c)| *c == ';')
            .map(|(i, _)| i)
        else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            "auml" => Some('ä'),
            "ouml" => Some('ö'),
            "uuml" => Some('ü'),
            "Auml" => Some('Ä'),
            "Ouml" => Some('Ö'),
            "Uuml" => Some('Ü'),
            "szlig" => Some('ß'),
            "euro" => Some('€'),
            "ndash" => Some('–'),
            "mdash" => Some('—'),
            "hellip" => Some('…'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The first paragraph of a text, at most `max` characters (cut at a word).
pub fn first_paragraph(text: &str, max: usize) -> String {
    let para = text
        .split("\n\n")
        .map(str::trim)
        .find(|p| !p.is_empty())
        .unwrap_or_default();
    if para.chars().count() <= max {
        return para.to_owned();
    }
    let cut: String = para.chars().take(max).collect();
    let at = cut.rfind(' ').unwrap_or(cut.len());
    format!("{}…", &cut[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_scripts_and_pixels_are_removed() {
        let html = r#"<p>Erste &amp; beste <b>Meldung</b></p><script>alert("x")</script>
            <img src="https://track.example/p.gif" width="1" height="1"><style>p{}</style>
            <p>Zweiter&nbsp;Absatz &#252;ber &#x263A; &lt;tag&gt;</p><!-- a > b -->"#;
        assert_eq!(
            html_to_text(html),
            "Erste & beste Meldung\n\nZweiter Absatz über ☺ <tag>"
        );
        assert_eq!(html_to_text("<SCRIPT type=x>evil()</SCRIPT>ok"), "ok");
        assert_eq!(html_to_text("a < b & c"), "a < b & c");
        assert_eq!(html_to_text("unclosed <b"), "unclosed");
        assert_eq!(html_to_text("&äöüäöüäöü; &amp;"), "&äöüäöüäöü; &");
    }

    #[test]
    fn the_first_paragraph_is_cut_at_a_word() {
        assert_eq!(
            first_paragraph("\n\nEins zwei drei\n\nvier", 100),
            "Eins zwei drei"
        );
        assert_eq!(first_paragraph("Eins zwei drei", 8), "Eins…");
    }
}

/// Hostile HTML, in any amount: no panic, output never longer than the input (so
/// the work done is linear in it), no NUL, and a first paragraph within its cap.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    /// The pieces the reducer treats specially.
    const PIECES: [&str; 32] = [
        "<",
        ">",
        "&",
        ";",
        "#",
        "x",
        "<p>",
        "<br/>",
        "</p>",
        "<div",
        "</",
        "<!",
        "<!--",
        "-->",
        "<script>",
        "</script",
        "<STYLE x=1>",
        "</style>",
        "&amp;",
        "&#x",
        "&#",
        "&#1114111;",
        "&#x110000;",
        "&nbsp;",
        "&hellip;",
        "ü",
        "€",
        "\0",
        "\n\n",
        " ",
        "\t",
        "Text",
    ];

    /// Strings made of those pieces, so that tags, unclosed tags, comments, dropped
    /// elements and entities meet in every order.
    fn markup() -> impl Strategy<Value = String> {
        prop::collection::vec(0..PIECES.len(), 0..300)
            .prop_map(|picks| picks.into_iter().map(|i| PIECES[i]).collect())
    }

    proptest! {
        #[test]
        fn markup_is_reduced_to_no_more_text_than_it_had(html in markup()) {
            let text = html_to_text(&html);
            prop_assert!(text.len() <= html.len(), "{} > {}", text.len(), html.len());
            prop_assert!(!text.contains('\0'));
            prop_assert!(!text.contains("\n\n\n"));
        }

        #[test]
        fn any_string_is_reduced_to_no_more_text_than_it_had(html in any::<String>()) {
            prop_assert!(html_to_text(&html).len() <= html.len());
        }

        #[test]
        fn a_first_paragraph_stays_within_its_cap(
            text in prop_oneof![markup(), any::<String>()],
            max in 0usize..700,
        ) {
            let para = first_paragraph(&html_to_text(&text), max);
            // The cap, and "…" when cut.
            prop_assert!(para.chars().count() <= max + 1);
            prop_assert!(!para.contains("\n\n"));
            let raw = first_paragraph(&text, max);
            prop_assert!(raw.chars().count() <= max + 1);
        }
    }

    /// A megabyte of each kind of nesting and non-closing that could make a naive
    /// reducer quadratic: these finish (the suite would time out otherwise) and
    /// shrink.
    #[test]
    fn a_megabyte_of_adversarial_markup_is_reduced() {
        const MB: usize = 1 << 20;
        let fill = |unit: &str| unit.repeat(MB / unit.len());
        let cases = [
            fill("<a"),
            fill("<a "),
            format!("{}>", fill("<b")),
            fill("<div><span>"),
            fill("<!--"),
            fill("<!-- -- >"),
            fill("<script>"),
            fill("<script></script"),
            format!("<script>{}", fill("</scrip")),
            fill("<style><script>"),
            fill("&"),
            fill("&#"),
            fill("&#x1F600"),
            fill("&amp;&lt;"),
            fill("&&&&&&&&&&&;"),
            fill("<p>"),
            fill("< "),
            fill("\n\n \n"),
            fill("ü€😀"),
        ];
        for html in cases {
            let text = html_to_text(&html);
            assert!(text.len() <= html.len());
            let para = first_paragraph(&text, 500);
            assert!(para.chars().count() <= 501);
        }
    }
}
