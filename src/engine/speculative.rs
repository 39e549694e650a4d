//! The speculative-sampling acceptance rule (Leviathan et al. 2023; Chen et al. 2023): a token
//! drawn from the draft distribution q is kept with probability min(1, p/q), otherwise one is
//! drawn from the residual max(0, p − q), normalised. The kept token is distributed exactly as
//! p, the target (high-gear) distribution.

use std::collections::HashMap;

use crate::llama::Token;

/// A small seeded generator (SplitMix64): reproducible draws for a given seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A distribution over the candidates a sampler chain left: (token, probability).
pub type Dist = [(Token, f32)];

/// Draws from `dist` (weights need not sum to one).
pub fn draw(dist: &Dist, rng: &mut Rng) -> Token {
    let total: f64 = dist.iter().map(|&(_, p)| p as f64).sum();
    let mut u = rng.uniform() * total;
    for &(t, p) in dist {
        u -= p as f64;
        if u < 0.0 {
            return t;
        }
    }
    dist.iter()
        .rev()
        .find(|&&(_, p)| p > 0.0)
        .map_or(dist[0].0, |&(t, _)| t)
}

/// Checks draft token `d` (drawn from `q`) against the target `p`: `(token, true)` keeps the
/// draft, `(token, false)` is the residual draw that replaces it.
pub fn verify(p: &Dist, q: &Dist, d: Token, rng: &mut Rng) -> (Token, bool) {
    let prob = |dist: &Dist, t: Token| {
        dist.iter()
            .find(|&&(x, _)| x == t)
            .map_or(0.0, |&(_, v)| v as f64)
    };
    let (pd, qd) = (prob(p, d), prob(q, d));
    if qd <= 0.0 || rng.uniform() * qd < pd {
        // qd == 0 cannot happen for a token drawn from q; keep the rule total anyway.
        return (d, qd > 0.0 || pd > 0.0);
    }
    let qm: HashMap<Token, f32> = q.iter().copied().collect();
    let residual: Vec<(Token, f32)> = p
        .iter()
        .map(|&(t, pt)| (t, (pt - qm.get(&t).copied().unwrap_or(0.0)).max(0.0)))
        .filter(|&(_, r)| r > 0.0)
        .collect();
    if residual.is_empty() {
        // p ≤ q everywhere means p == q up to rounding: any draw from p is exact.
        return (draw(p, rng), false);
    }
    (draw(&residual, rng), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empirical distribution of the verified token when drafts come from q.
    fn output_distribution(p: &Dist, q: &Dist, n: usize) -> HashMap<Token, f64> {
        let mut rng = Rng::new(7);
        let mut counts: HashMap<Token, f64> = HashMap::new();
        for _ in 0..n {
            let d = draw(q, &mut rng);
            let (t, _) = verify(p, q, d, &mut rng);
            *counts.entry(t).or_default() += 1.0 / n as f64;
        }
        counts
    }

    #[test]
    fn verified_tokens_follow_the_target_distribution() {
        let cases: [(&Dist, &Dist); 3] = [
            // q far from p, with a token p never draws and one q never proposes.
            (
                &[(0, 0.5), (1, 0.3), (2, 0.2)],
                &[(1, 0.1), (2, 0.6), (3, 0.3)],
            ),
            // q == p: always accepted.
            (&[(4, 0.25), (5, 0.75)], &[(4, 0.25), (5, 0.75)]),
            // A sharp target, a flat draft.
            (
                &[(0, 0.97), (1, 0.01), (2, 0.01), (3, 0.01)],
                &[(0, 0.25), (1, 0.25), (2, 0.25), (3, 0.25)],
            ),
        ];
        let n = 200_000;
        for (p, q) in cases {
            let got = output_distribution(p, q, n);
            for &(t, pt) in p {
                let g = got.get(&t).copied().unwrap_or(0.0);
                // 5 standard errors of a binomial proportion.
                let tol = 5.0 * (pt as f64 * (1.0 - pt as f64) / n as f64).sqrt() + 1e-9;
                assert!(
                    (g - pt as f64).abs() <= tol,
                    "token {t}: {g} vs {pt} (p {p:?}, q {q:?})"
                );
            }
            let outside: f64 = got
                .iter()
                .filter(|(t, _)| !p.iter().any(|(x, _)| x == *t))
                .map(|(_, v)| v)
                .sum();
            assert_eq!(outside, 0.0, "tokens outside p were emitted");
        }
    }

    #[test]
    fn equal_distributions_always_accept_and_rng_is_reproducible() {
        let p: &Dist = &[(1, 0.5), (2, 0.5)];
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let d = draw(p, &mut rng);
            assert_eq!(verify(p, p, d, &mut rng), (d, true));
        }
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        assert!((0..100).all(|_| a.uniform() == b.uniform()));
        assert!((0..1000)
            .map(|_| a.uniform())
            .all(|u| (0.0..1.0).contains(&u)));
    }
}
