//! Conversation history: earlier turns sent along with a new message,
//! newest first, up to a token budget, so long conversations neither grow
//! without bound nor lose their most recent context.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

impl Turn {
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            text: text.into(),
        }
    }

    /// A cheap estimate (about four characters per token, plus framing);
    /// the budget is a bound on cost, not an exact count.
    pub fn estimated_tokens(&self) -> u64 {
        self.text.chars().count().div_ceil(4) as u64 + 4
    }
}

/// The most recent turns of `turns` (oldest first) that fit in `budget`
/// tokens, starting with a user turn as the Messages API requires.
pub fn trim(turns: &[Turn], budget: u64) -> Vec<Turn> {
    let mut used = 0;
    let mut start = turns.len();
    for (i, turn) in turns.iter().enumerate().rev() {
        used += turn.estimated_tokens();
        if used > budget {
            break;
        }
        start = i;
    }
    let kept = &turns[start..];
    let first_user = kept
        .iter()
        .position(|t| t.role == Role::User)
        .unwrap_or(kept.len());
    kept[first_user..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(pairs: usize, chars: usize) -> Vec<Turn> {
        (0..pairs)
            .flat_map(|i| {
                [
                    Turn::new(Role::User, format!("{i}{}", "u".repeat(chars))),
                    Turn::new(Role::Assistant, format!("{i}{}", "a".repeat(chars))),
                ]
            })
            .collect()
    }

    #[test]
    fn keeps_everything_within_budget() {
        let turns = conversation(3, 10);
        assert_eq!(trim(&turns, 10_000), turns);
    }

    #[test]
    fn drops_the_oldest_turns_first() {
        let turns = conversation(10, 396); // 100 + 4 tokens each
        let kept = trim(&turns, 520);
        assert_eq!(kept.len(), 4);
        assert_eq!(kept[0], turns[16]);
        assert_eq!(kept.last(), turns.last());
    }

    #[test]
    fn never_starts_with_an_assistant_turn() {
        let turns = conversation(10, 396);
        let kept = trim(&turns, 104 * 3);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].role, Role::User);
    }

    #[test]
    fn a_zero_budget_sends_no_history() {
        assert!(trim(&conversation(2, 5), 0).is_empty());
    }
}
