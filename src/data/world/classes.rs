//! The world's classes: every combination of a [`Shape`], a [`Colour`] and a [`Texture`]
//! (5 × 4 × 3 = 60), each nameable in words ("striped red circle").
//!
//! Label order interleaves the attributes: class c is (shape c mod 5, colour c mod 4,
//! texture c mod 3). Because 5, 4 and 3 are pairwise coprime this is a bijection of
//! 0..60 (Chinese remainder theorem), and any run of consecutive labels — the head, the
//! middle or the tail of a long-tail profile cut in label order — holds every shape,
//! colour and texture in near-equal numbers, so no attribute is rare by construction.

/// An object's outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A disc.
    Circle,
    /// A square.
    Square,
    /// An equilateral triangle.
    Triangle,
    /// A plus-shaped cross.
    Cross,
    /// A five-pointed star.
    Star,
}

/// An object's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
}

/// The pattern on an object's surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Texture {
    /// Uniform colour.
    Plain,
    /// Parallel stripes.
    Striped,
    /// A grid of dots.
    Dotted,
}

/// Every shape, in attribute order.
pub const SHAPES: [Shape; 5] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Cross,
    Shape::Star,
];
/// Every colour, in attribute order.
pub const COLOURS: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];
/// Every texture, in attribute order.
pub const TEXTURES: [Texture; 3] = [Texture::Plain, Texture::Striped, Texture::Dotted];

/// Number of classes (every shape × colour × texture).
pub const NUM_CLASSES: usize = SHAPES.len() * COLOURS.len() * TEXTURES.len();

impl Shape {
    /// The noun.
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Cross => "cross",
            Shape::Star => "star",
        }
    }
}

impl Colour {
    /// The adjective.
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }

    /// Base RGB (0–255) before per-image jitter and lighting.
    pub fn rgb(self) -> [f64; 3] {
        match self {
            Colour::Red => [215.0, 40.0, 40.0],
            Colour::Green => [40.0, 170.0, 60.0],
            Colour::Blue => [45.0, 80.0, 215.0],
            Colour::Yellow => [235.0, 205.0, 35.0],
        }
    }
}

impl Texture {
    /// The adjective ("plain", "striped", "dotted").
    pub fn word(self) -> &'static str {
        match self {
            Texture::Plain => "plain",
            Texture::Striped => "striped",
            Texture::Dotted => "dotted",
        }
    }

    /// The pattern as a phrase after "with" ("stripes", "dots", "no pattern").
    pub fn pattern_phrase(self) -> &'static str {
        match self {
            Texture::Plain => "no pattern",
            Texture::Striped => "stripes",
            Texture::Dotted => "dots",
        }
    }
}

/// One class: its three attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Class {
    /// Outline.
    pub shape: Shape,
    /// Colour.
    pub colour: Colour,
    /// Surface pattern.
    pub texture: Texture,
}

impl Class {
    /// Class `c` (`c < NUM_CLASSES`): shape c mod 5, colour c mod 4, texture c mod 3.
    pub fn of(c: usize) -> Class {
        assert!(c < NUM_CLASSES, "world class {c} out of range (0..{NUM_CLASSES})");
        Class {
            shape: SHAPES[c % SHAPES.len()],
            colour: COLOURS[c % COLOURS.len()],
            texture: TEXTURES[c % TEXTURES.len()],
        }
    }

    /// The class's label (inverse of [`Class::of`]).
    pub fn label(self) -> usize {
        (0..NUM_CLASSES)
            .find(|&c| Class::of(c) == self)
            .expect("every attribute combination is a class")
    }

    /// The name used in prompts: "texture colour shape", e.g. "striped red circle".
    pub fn prompt_name(self) -> String {
        format!(
            "{} {} {}",
            self.texture.word(),
            self.colour.word(),
            self.shape.word()
        )
    }
}

/// Every class's prompt name, in label order.
pub fn prompt_names() -> Vec<String> {
    (0..NUM_CLASSES).map(|c| Class::of(c).prompt_name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn labels_enumerate_every_combination_once() {
        let all: HashSet<Class> = (0..NUM_CLASSES).map(Class::of).collect();
        assert_eq!(all.len(), 60);
        for c in 0..NUM_CLASSES {
            assert_eq!(Class::of(c).label(), c);
        }
        let names: HashSet<String> = prompt_names().into_iter().collect();
        assert_eq!(names.len(), 60);
        assert_eq!(Class::of(0).prompt_name(), "plain red circle");
        assert_eq!(Class::of(7).prompt_name(), "striped yellow triangle");
    }

    #[test]
    fn every_stretch_of_labels_mixes_the_attributes() {
        // Any 20 consecutive labels: 4 of each shape, 5 of each colour, 6–7 of each texture.
        for start in 0..=40 {
            let cls: Vec<Class> = (start..start + 20).map(Class::of).collect();
            for s in SHAPES {
                assert_eq!(cls.iter().filter(|c| c.shape == s).count(), 4);
            }
            for k in COLOURS {
                assert_eq!(cls.iter().filter(|c| c.colour == k).count(), 5);
            }
            for t in TEXTURES {
                let n = cls.iter().filter(|c| c.texture == t).count();
                assert!((6..=7).contains(&n), "{t:?}: {n}");
            }
        }
    }
}
