//! `--train-layer`: which decoder layers are trained. One index (`18`), a list
//! (`17,18`), a range (`16-19`), a mix (`3,16-19`), `all` (the full-parameter
//! baseline through the same code path), or `top-K` (the K highest-contribution
//! layers of a sweep: `crate::sweep::select` resolves it with `--from-sweep`; here
//! it is an error naming both flags).
//!
//! Each trained layer also carries a learning-rate multiplier (1 unless
//! `--lr-by-contribution` set one), which the `Trainer` applies to that layer only.

use crate::{Error, Result};

/// Sorted, distinct layer indices, each with its learning-rate multiplier.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainLayers(Vec<usize>, Vec<f32>);

impl TrainLayers {
    /// Parse a `--train-layer` value for a model of `num_layers` layers.
    pub fn parse(spec: &str, num_layers: usize) -> Result<Self> {
        let bad = |why: &str| Error::invalid(format!("--train-layer '{spec}': {why}"));
        let spec_t = spec.trim();
        if spec_t.eq_ignore_ascii_case("all") {
            return Ok(Self::from_sorted((0..num_layers).collect()));
        }
        if Self::top_k(spec)?.is_some() {
            return Err(bad(
                "top-K picks the K highest-contribution layers of a sweep; give --from-sweep DIR/sweep.json",
            ));
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
        Ok(Self::from_sorted(layers))
    }

    /// `Some(K)` when `spec` is `top-K` (K >= 1); `None` for every other form.
    pub fn top_k(spec: &str) -> Result<Option<usize>> {
        let t = spec.trim();
        let Some(k) = t
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("top-"))
            .map(|_| &t[4..])
        else {
            return Ok(None);
        };
        match k.trim().parse::<usize>() {
            Ok(k) if k >= 1 => Ok(Some(k)),
            _ => Err(Error::invalid(format!(
                "--train-layer '{spec}': top-K needs a whole number K >= 1"
            ))),
        }
    }

    /// These layers (any order, distinct, each `< num_layers`), learning-rate
    /// multipliers 1.
    pub fn from_layers(mut layers: Vec<usize>, num_layers: usize) -> Result<Self> {
        layers.sort_unstable();
        layers.dedup();
        if layers.is_empty() {
            return Err(Error::invalid("--train-layer: no layer to train"));
        }
        if let Some(&l) = layers.iter().find(|&&l| l >= num_layers) {
            return Err(Error::invalid(format!(
                "--train-layer: layer {l} is out of range (the model has layers 0-{})",
                num_layers.saturating_sub(1)
            )));
        }
        Ok(Self::from_sorted(layers))
    }

    fn from_sorted(layers: Vec<usize>) -> Self {
        let scales = vec![1.0; layers.len()];
        TrainLayers(layers, scales)
    }

    /// Set each layer's learning-rate multiplier (`scale(layer)`, finite, >= 0).
    pub fn with_lr_scales(mut self, scale: impl Fn(usize) -> f32) -> Result<Self> {
        for (i, &l) in self.0.iter().enumerate() {
            let s = scale(l);
            if !(s.is_finite() && s >= 0.0) {
                return Err(Error::invalid(format!(
                    "layer {l}: learning-rate multiplier {s} must be finite and >= 0"
                )));
            }
            self.1[i] = s;
        }
        Ok(self)
    }

    /// The learning-rate multiplier of a trained layer (1 for any other).
    pub fn lr_scale(&self, layer: usize) -> f32 {
        self.0
            .binary_search(&layer)
            .map(|i| self.1[i])
            .unwrap_or(1.0)
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
    fn top_k_and_lr_scales() {
        assert_eq!(TrainLayers::top_k("top-3").unwrap(), Some(3));
        assert_eq!(TrainLayers::top_k(" TOP-12 ").unwrap(), Some(12));
        assert_eq!(TrainLayers::top_k("16-19").unwrap(), None);
        assert_eq!(TrainLayers::top_k("to").unwrap(), None);
        let t = TrainLayers::from_layers(vec![9, 2, 9], 10).unwrap();
        assert_eq!(t.layers(), &[2, 9]);
        assert_eq!(t.lr_scale(9), 1.0);
        let t = t
            .with_lr_scales(|l| if l == 9 { 0.25 } else { 1.0 })
            .unwrap();
        assert_eq!(
            (t.lr_scale(2), t.lr_scale(9), t.lr_scale(5)),
            (1.0, 0.25, 1.0)
        );
        assert!(t.clone().with_lr_scales(|_| f32::NAN).is_err());
        assert!(TrainLayers::from_layers(vec![10], 10).is_err());
        assert!(TrainLayers::from_layers(vec![], 10).is_err());
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
            ("top-2", "--from-sweep"),
            ("top-0", "K >= 1"),
            ("top-x", "K >= 1"),
        ] {
            let e = TrainLayers::parse(spec, 36).unwrap_err().to_string();
            assert!(
                e.contains("--train-layer") && e.contains(needle),
                "{spec}: {e}"
            );
        }
    }
}
