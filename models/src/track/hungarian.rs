//! Minimum-cost assignment (Hungarian / Kuhn–Munkres, O(n³) with potentials).

/// For an `rows × cols` cost matrix (row-major), the column assigned to each row (`None` for
/// rows left over when there are more rows than columns), minimising the total cost.
pub fn assign(cost: &[f64], rows: usize, cols: usize) -> Vec<Option<usize>> {
    assert_eq!(cost.len(), rows * cols, "cost matrix is {rows}x{cols}");
    if rows == 0 || cols == 0 {
        return vec![None; rows];
    }
    // The algorithm wants rows <= cols; transpose otherwise.
    if rows > cols {
        let mut t = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = cost[r * cols + c];
            }
        }
        let by_col = assign(&t, cols, rows);
        let mut out = vec![None; rows];
        for (c, r) in by_col.into_iter().enumerate() {
            if let Some(r) = r {
                out[r] = Some(c);
            }
        }
        return out;
    }
    let (n, m) = (rows, cols);
    // 1-based arrays as in the classic e-maxx formulation.
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; m + 1];
    let mut p = vec![0usize; m + 1];
    let mut way = vec![0usize; m + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![f64::INFINITY; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=m {
                if !used[j] {
                    let cur = cost[(i0 - 1) * m + (j - 1)] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![None; n];
    for j in 1..=m {
        if p[j] != 0 {
            out[p[j] - 1] = Some(j - 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(cost: &[f64], cols: usize, a: &[Option<usize>]) -> f64 {
        a.iter()
            .enumerate()
            .filter_map(|(r, c)| c.map(|c| cost[r * cols + c]))
            .sum()
    }

    /// Minimum over every injective assignment of the smaller side, by brute force.
    fn brute(cost: &[f64], rows: usize, cols: usize) -> f64 {
        fn go(cost: &[f64], rows: usize, cols: usize, r: usize, used: &mut Vec<bool>) -> f64 {
            if r == rows {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            let free = used.iter().filter(|u| !**u).count();
            if rows - r > free {
                // More rows than columns left: this row may stay unassigned.
                best = go(cost, rows, cols, r + 1, used);
            }
            for c in 0..cols {
                if !used[c] {
                    used[c] = true;
                    best = best.min(cost[r * cols + c] + go(cost, rows, cols, r + 1, used));
                    used[c] = false;
                }
            }
            best
        }
        go(cost, rows, cols, 0, &mut vec![false; cols])
    }

    #[test]
    fn matches_brute_force_on_random_matrices() {
        let mut rng = aegis_hal::rng::XorShift(0x9e37_79b9_7f4a_7c15);
        let mut rnd = || rng.next_f64();
        for rows in 1..=5 {
            for cols in 1..=5 {
                for _ in 0..20 {
                    let cost: Vec<f64> =
                        (0..rows * cols).map(|_| (rnd() * 100.0).round()).collect();
                    let a = assign(&cost, rows, cols);
                    assert_eq!(a.iter().flatten().count(), rows.min(cols));
                    let mut seen = std::collections::HashSet::new();
                    assert!(
                        a.iter().flatten().all(|c| seen.insert(*c)),
                        "a column used twice"
                    );
                    let got = total(&cost, cols, &a);
                    assert!(
                        (got - brute(&cost, rows, cols)).abs() < 1e-9,
                        "{rows}x{cols}: {cost:?}"
                    );
                }
            }
        }
        assert_eq!(assign(&[], 0, 3), Vec::<Option<usize>>::new());
        assert_eq!(assign(&[], 2, 0), vec![None, None]);
    }
}
