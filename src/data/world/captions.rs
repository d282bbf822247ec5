//! Captions of pretraining images, from varied templates. Most name all three attributes
//! in varied word orders ("a photo of a striped red circle.", "a red circle with
//! stripes."); some name only one or two ("a red shape.", "a striped thing.", "a
//! circle."), so a text encoder trained on them learns each attribute word on its own
//! and how they compose. The downstream prompt template "a photo of a {}." with a class
//! name is one of the full templates.
//!
//! A [`Caption`] knows which attributes its template names ([`Named`]), so a contrastive
//! batch can tell which of its images a caption truly describes ([`Caption::describes`]):
//! "a red shape." fits every red object, not only the one it was drawn for.

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

/// Which attributes a template names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Named {
    /// The shape noun (`{s}`).
    pub shape: bool,
    /// The colour (`{c}`).
    pub colour: bool,
    /// The texture, as adjective or pattern phrase (`{t}`, `{p}`).
    pub texture: bool,
}

impl Named {
    /// The attributes `template`'s placeholders name.
    pub fn of_template(template: &str) -> Named {
        Named {
            shape: template.contains("{s}"),
            colour: template.contains("{c}"),
            texture: template.contains("{t}") || template.contains("{p}"),
        }
    }

    /// Whether every named attribute of `drawn_for` is also `other`'s.
    pub fn agree(self, drawn_for: Class, other: Class) -> bool {
        (!self.shape || drawn_for.shape == other.shape)
            && (!self.colour || drawn_for.colour == other.colour)
            && (!self.texture || drawn_for.texture == other.texture)
    }
}

/// A caption drawn for a class, with what it says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    /// The text.
    pub text: String,
    /// The class it was drawn for.
    pub class: Class,
    /// The attributes its template names.
    pub named: Named,
}

impl Caption {
    /// Whether the caption is true of an object of class `other` (every attribute it
    /// names is `other`'s).
    pub fn describes(&self, other: Class) -> bool {
        self.named.agree(self.class, other)
    }
}

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
    draw_caption(class, r).text
}

/// [`draw`] with the named attributes (the same draws: the same text).
pub fn draw_caption(class: Class, r: &mut StreamRng) -> Caption {
    let pool = if r.random_bool(PARTIAL_PROBABILITY) {
        PARTIAL_TEMPLATES
    } else {
        FULL_TEMPLATES
    };
    let template = pool[r.random_range(0..pool.len())];
    Caption {
        text: fill(template, class),
        class,
        named: Named::of_template(template),
    }
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
            assert_ne!(
                Named::of_template(t),
                Named {
                    shape: true,
                    colour: true,
                    texture: true
                },
                "{t}"
            );
        }
        for t in FULL_TEMPLATES {
            let n = Named::of_template(t);
            assert!(n.shape && n.colour && n.texture, "{t}");
        }
    }

    #[test]
    fn a_caption_describes_exactly_the_classes_that_share_what_it_names() {
        let red_circle = Class::of(0); // plain red circle
        let caption = |template: &str| Caption {
            text: fill(template, red_circle),
            class: red_circle,
            named: Named::of_template(template),
        };
        let count = |c: &Caption| (0..60).filter(|&k| c.describes(Class::of(k))).count();
        assert_eq!(count(&caption("a photo of a {t} {c} {s}.")), 1);
        assert_eq!(count(&caption("a {c} {s}.")), 3); // three textures
        assert_eq!(count(&caption("a {c} shape.")), 15); // five shapes × three textures
        assert_eq!(count(&caption("a {t} thing.")), 20);
        assert_eq!(count(&caption("a {s}.")), 12);
        let red_star = Class::of(4); // striped red star
        assert!(caption("a {c} shape.").describes(red_star));
        assert!(!caption("a {c} {s}.").describes(red_star));
        // The same draws as `draw`.
        for i in 0..50 {
            let mut a = crate::rng::substream(1, "t", &[i]);
            let mut b = crate::rng::substream(1, "t", &[i]);
            let c = draw_caption(red_circle, &mut a);
            assert_eq!(c.text, draw(red_circle, &mut b));
            assert!(c.describes(red_circle));
        }
    }
}
