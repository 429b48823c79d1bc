//! Closed sets of metric label values, declared once.
//!
//! [`closed_labels!`] writes the enum, its `ALL` list and its `as_str` from a single list of
//! `Variant => "label"` lines, so a variant can never be missing from `ALL` (and so from the
//! pre-registered metric handles and the per-reason counter arrays indexed by `index()`).
//!
//! Owns the declaration macro. Must not hold label values of its own.

/// Declares a label enum: `ALL` in declaration order, `COUNT`, `as_str`, and `index()` with
/// `ALL[r.index()] == r`.
macro_rules! closed_labels {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// Number of values (the length of per-value counter arrays).
            pub const COUNT: usize = Self::ALL.len();

            /// The metric label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// Position in [`Self::ALL`].
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

pub(crate) use closed_labels;

#[cfg(test)]
#[allow(unreachable_pub)] // the sample enum is private to the test
mod tests {
    closed_labels! {
        enum Sample {
            A => "a",
            /// Documented variants pass through.
            B => "b",
        }
    }

    #[test]
    fn all_lists_every_variant_at_its_index() {
        assert_eq!(Sample::ALL, &[Sample::A, Sample::B]);
        assert_eq!(Sample::COUNT, 2);
        for (i, v) in Sample::ALL.iter().enumerate() {
            assert_eq!(v.index(), i);
        }
        assert_eq!(Sample::B.as_str(), "b");
    }
}
