//! HTML text for the report: escaping, value formatting and table markup.
//!
//! Every string that reaches the page from a history or from `results.json` (keys, values, fault names, roles,
//! config flags, explanations) passes through [`escape`] here, so a value such as `<script>` is shown, never run.
//! Text inside the SVG charts is escaped by plotters' SVG backend; nothing else writes markup from data.

use std::fmt::Write as _;

use serde_json::Value;

/// Longest text shown for one JSON value in a table cell; longer values are cut with an ellipsis.
pub const VALUE_CHARS_MAX: usize = 200;

/// `text` with the five HTML-significant characters replaced by entities, safe in text and in quoted attributes.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// A JSON value as plain (unescaped) text: strings without quotes, everything else as compact JSON, cut to
/// [`VALUE_CHARS_MAX`] characters.
pub fn value_text(value: &Value) -> String {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number_text(number),
        other => other.to_string(),
    };
    truncate(&text, VALUE_CHARS_MAX)
}

/// Integers as they are; other numbers with at most three decimals.
fn number_text(number: &serde_json::Number) -> String {
    if number.is_f64() {
        let float = number.as_f64().unwrap_or(f64::NAN);
        let text = format!("{float:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        number.to_string()
    }
}

/// `text` cut to at most `chars_max` characters, ending in an ellipsis when cut.
pub fn truncate(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(chars_max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Nanoseconds since the run started, as seconds with three decimals.
pub fn seconds_text(nanos: u64) -> String {
    format!("{:.3}", nanos as f64 / 1e9)
}

/// A table: a header row and body rows of already-escaped cell markup.
pub struct Table {
    markup: String,
}

impl Table {
    /// Starts a table with the given (plain text) column names and an optional CSS class.
    pub fn new(class: &str, columns: &[&str]) -> Self {
        let mut markup = format!("<table class=\"{}\">\n<thead><tr>", escape(class));
        for column in columns {
            let _ = write!(markup, "<th>{}</th>", escape(column));
        }
        markup.push_str("</tr></thead>\n<tbody>\n");
        Self { markup }
    }

    /// Adds a row of cells given as markup (the caller escapes data with [`escape`]).
    pub fn row_markup(&mut self, cells: &[String]) {
        self.markup.push_str("<tr>");
        for cell in cells {
            let _ = write!(self.markup, "<td>{cell}</td>");
        }
        self.markup.push_str("</tr>\n");
    }

    /// Adds a row of plain-text cells, escaping each.
    pub fn row_text(&mut self, cells: &[String]) {
        let escaped: Vec<String> = cells.iter().map(|cell| escape(cell)).collect();
        self.row_markup(&escaped);
    }

    /// The finished table.
    pub fn finish(mut self) -> String {
        self.markup.push_str("</tbody></table>\n");
        self.markup
    }
}

/// A legend: one coloured swatch and label per entry (colours are CSS colours built from the report's own
/// constants, never from data).
pub fn legend(entries: &[(&str, String)]) -> String {
    let mut markup = String::from("<div class=\"legend\">");
    for (label, color) in entries {
        let _ = write!(
            markup,
            "<span><i style=\"background:{}\"></i>{}</span>",
            escape(color),
            escape(label)
        );
    }
    markup.push_str("</div>\n");
    markup
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_every_markup_character() {
        // Text and attribute contexts are both safe after escaping.
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
    }

    #[test]
    fn formats_values_for_cells() {
        // Strings lose their quotes, floats keep three decimals, long values are cut.
        assert_eq!(value_text(&json!("halves")), "halves");
        assert_eq!(value_text(&json!(0.25)), "0.25");
        assert_eq!(value_text(&json!(2.0)), "2");
        assert_eq!(value_text(&json!(12)), "12");
        assert_eq!(value_text(&json!([1, null])), "[1,null]");
        let long = "x".repeat(VALUE_CHARS_MAX * 2);
        assert_eq!(value_text(&json!(long)).chars().count(), VALUE_CHARS_MAX);
    }
}
