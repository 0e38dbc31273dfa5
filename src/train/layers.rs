//! `--train-layer`: which decoder layers are trained. One index (`18`), a list
//! (`17,18`), a range (`16-19`), a mix (`3,16-19`), or `all` (the full-parameter
//! baseline through the same code path).

use crate::{Error, Result};

/// Sorted, distinct layer indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainLayers(Vec<usize>);

impl TrainLayers {
    /// Parse a `--train-layer` value for a model of `num_layers` layers.
    pub fn parse(spec: &str, num_layers: usize) -> Result<Self> {
        let bad = |why: &str| Error::invalid(format!("--train-layer '{spec}': {why}"));
        let spec_t = spec.trim();
        if spec_t.eq_ignore_ascii_case("all") {
            return Ok(TrainLayers((0..num_layers).collect()));
        }
        let index = |s: &str| -> Result<usize> {
            let i: usize = s
                .trim()
                .parse()
                .map_err(|_| bad(&format!("'{}' is not a layer index", s.trim())))?;
            if i >= num_layers {
                return Err(bad(&format!(
                    "layer {i} is out of range (the model has layers 0-{})",
                    num_layers - 1
                )));
            }
            Ok(i)
        };
        let mut layers = Vec::new();
        for part in spec_t.split(',') {
            if part.trim().is_empty() {
                return Err(bad("empty entry"));
            }
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (index(a)?, index(b)?);
                    if a > b {
                        return Err(bad(&format!("range {a}-{b} runs backwards")));
                    }
                    layers.extend(a..=b);
                }
                None => layers.push(index(part)?),
            }
        }
        layers.sort_unstable();
        layers.dedup();
        Ok(TrainLayers(layers))
    }

    pub fn layers(&self) -> &[usize] {
        &self.0
    }

    /// The lowest trained layer: everything below it is the frozen prefix.
    pub fn lowest(&self) -> usize {
        self.0[0]
    }

    pub fn contains(&self, layer: usize) -> bool {
        self.0.binary_search(&layer).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form() {
        let p = |s: &str| TrainLayers::parse(s, 36).unwrap().layers().to_vec();
        assert_eq!(p("18"), vec![18]);
        assert_eq!(p("17,18"), vec![17, 18]);
        assert_eq!(p("16-19"), vec![16, 17, 18, 19]);
        assert_eq!(p(" 19, 3,16-17,3"), vec![3, 16, 17, 19]);
        assert_eq!(p("all").len(), 36);
        assert_eq!(TrainLayers::parse("5-7", 36).unwrap().lowest(), 5);
    }

    #[test]
    fn errors_name_the_flag_and_value() {
        for (spec, needle) in [
            ("36", "out of range"),
            ("x", "'x' is not a layer index"),
            ("5-2", "backwards"),
            ("1,,2", "empty entry"),
            ("", "empty entry"),
            ("-3", "is not a layer index"),
        ] {
            let e = TrainLayers::parse(spec, 36).unwrap_err().to_string();
            assert!(
                e.contains("--train-layer") && e.contains(needle),
                "{spec}: {e}"
            );
        }
    }
}
