//! Captions of pretraining images, from varied templates. Most name all three attributes
//! in varied word orders ("a photo of a striped red circle.", "a red circle with
//! stripes."); some name only one or two ("a red shape.", "a striped thing.", "a
//! circle."), so a text encoder trained on them learns each attribute word on its own
//! and how they compose. The downstream prompt template "a photo of a {}." with a class
//! name is one of the full templates.

use rand::Rng;

use super::classes::Class;
use crate::rng::StreamRng;

/// Templates naming shape, colour and texture. Placeholders: `{t}` texture adjective,
/// `{c}` colour, `{s}` shape, `{p}` pattern phrase ("stripes", "dots", "no pattern").
pub const FULL_TEMPLATES: &[&str] = &[
    "a photo of a {t} {c} {s}.",
    "a {t} {c} {s}.",
    "a picture of a {t} {c} {s}.",
    "an image of a {t} {c} {s}.",
    "this is a {t} {c} {s}.",
    "a {c} {s} that is {t}.",
    "a {t} {s} in {c}.",
    "a {c} {s} with {p}.",
    "a photo of a {c} {s} with {p}.",
];

/// Templates naming one or two attributes (same placeholders).
pub const PARTIAL_TEMPLATES: &[&str] = &[
    "a photo of a {c} {s}.",
    "a {c} {s}.",
    "a {t} {s}.",
    "a photo of a {t} {s}.",
    "a {t} {c} shape.",
    "a {c} shape.",
    "a {t} thing.",
    "a photo of a {s}.",
    "something {c}.",
    "a {s}.",
];

/// Probability that a caption uses a partial template.
pub const PARTIAL_PROBABILITY: f64 = 0.3;

/// Fills `template` with `class`'s words.
pub fn fill(template: &str, class: Class) -> String {
    template
        .replace("{t}", class.texture.word())
        .replace("{c}", class.colour.word())
        .replace("{s}", class.shape.word())
        .replace("{p}", class.texture.pattern_phrase())
}

/// A caption of `class` drawn from `r`: a partial template with probability
/// [`PARTIAL_PROBABILITY`], else a full one, uniformly within the kind.
pub fn draw(class: Class, r: &mut StreamRng) -> String {
    let pool = if r.random_bool(PARTIAL_PROBABILITY) {
        PARTIAL_TEMPLATES
    } else {
        FULL_TEMPLATES
    };
    fill(pool[r.random_range(0..pool.len())], class)
}

/// Every caption `class` can get (all templates filled), for vocabulary checks.
pub fn all(class: Class) -> Vec<String> {
    FULL_TEMPLATES
        .iter()
        .chain(PARTIAL_TEMPLATES)
        .map(|t| fill(t, class))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_every_placeholder() {
        let c = Class::of(7); // striped yellow triangle
        assert_eq!(
            fill(FULL_TEMPLATES[0], c),
            "a photo of a striped yellow triangle."
        );
        assert_eq!(fill(FULL_TEMPLATES[7], c), "a yellow triangle with stripes.");
        for caption in all(c) {
            assert!(!caption.contains('{'), "{caption}");
        }
        // Partial templates leave out at least one attribute word.
        for t in PARTIAL_TEMPLATES {
            let s = fill(t, c);
            let named = ["striped", "yellow", "triangle"]
                .iter()
                .filter(|w| s.split(|ch: char| !ch.is_alphabetic()).any(|x| x == **w))
                .count();
            assert!(named < 3, "{s}");
        }
    }
}
