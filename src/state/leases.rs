//! The lease handlers: claims (and their idempotency keys), renewals, progress, the end of a
//! lease, and expiry by a majority of voters. The task handlers are in `machine.rs`.
use super::machine::{
    ClaimArgs, Effects, EndedLease, HeardLease, Owner, State, VoterConfigs, USED_CLAIMS_KEPT,
};
use super::types::*;
use std::collections::BTreeSet;
use std::sync::Arc;

fn quorum(votes: &BTreeSet<NodeId>, configs: &VoterConfigs) -> bool {
    !configs.is_empty()
        && configs
            .iter()
            .all(|c| !c.is_empty() && c.iter().filter(|n| votes.contains(n)).count() * 2 > c.len())
}

impl State {
    /// The live lease a claim with this idempotency key created, if any.
    pub fn lease_of_claim(&self, worker_id: &str, claim_id: &str) -> Option<&Lease> {
        self.claims
            .get(&(worker_id.to_string(), claim_id.to_string()))
            .and_then(|t| self.leases.get(t))
    }

    pub(super) fn claim(
        &mut self,
        rev: Revision,
        now: u64,
        args: ClaimArgs,
        fx: &mut Effects,
    ) -> Response {
        let ClaimArgs {
            queue,
            worker_id,
            claim_id,
            ttl_override,
            task_id,
            secret,
        } = args;
        if !claim_id.is_empty() {
            let key = (worker_id.to_string(), claim_id.to_string());
            if let Some(lease) = self.claims.get(&key).and_then(|t| self.leases.get(t)) {
                // A retry of a claim that was applied (its answer was lost): same lease, and
                // the secret it was made with (the retry's own is not used).
                let task = (*self.tasks[&lease.task_id]).clone();
                return Response::Claimed {
                    task,
                    lease: lease.clone(),
                    secret: self.secret_of(lease.token).unwrap_or(0),
                };
            }
            if let Some(&token) = self.used_claims.get(&key) {
                return Response::Rejected(Rejection::ClaimKeyUsed {
                    claim_id: claim_id.to_string(),
                    token,
                });
            }
        }
        let id = match task_id {
            Some(id) => match self.tasks.get(id) {
                None => return Response::Rejected(Rejection::TaskNotFound { id: id.to_string() }),
                Some(t) if *t.spec.queue != *queue => {
                    return Response::Rejected(Rejection::TaskNotFound { id: id.to_string() })
                }
                Some(t) if t.state.is_terminal() => {
                    return Response::Rejected(Rejection::Terminal {
                        id: id.to_string(),
                        state: t.state,
                    })
                }
                Some(t) if t.state != TaskState::Pending => {
                    return Response::Rejected(Rejection::NotClaimable {
                        id: id.to_string(),
                        state: t.state,
                    })
                }
                Some(t) => t.spec.id.clone(),
            },
            None => match self.first_claimable(queue, now) {
                Some(id) => id.clone(),
                None => return Response::NoTask,
            },
        };
        let mut t = self.take(&id).expect("indexed task exists");
        debug_assert!(rev > self.last_token, "tokens only grow");
        self.last_token = rev;
        let token = rev;
        t.attempt += 1;
        t.state = TaskState::Running;
        t.lease = Some(token);
        let lease = Lease {
            token,
            task_id: id.clone(),
            attempt: t.attempt,
            worker_id: worker_id.to_string(),
            claim_id: claim_id.to_string(),
            ttl_ms: ttl_override.unwrap_or(t.spec.lease_ttl_ms),
            renewals: 0,
            votes: BTreeSet::new(),
        };
        t.history.push(AttemptRecord {
            attempt: t.attempt,
            worker_id: worker_id.to_string(),
            lease_token: token,
            outcome: AttemptOutcome::Running,
            exit_code: None,
            error: String::new(),
            started_rev: rev,
            ended_rev: 0,
            late: false,
            reported: None,
            expiry_voters: Vec::new(),
            expiry_silence_ms: Vec::new(),
            renewals: 0,
        });
        self.tokens.insert(
            token,
            Owner {
                task: id.clone(),
                secret,
            },
        );
        if !claim_id.is_empty() {
            self.claims
                .insert((worker_id.to_string(), claim_id.to_string()), token);
        }
        self.leases.insert(token, lease.clone());
        fx.heard.push(HeardLease {
            token,
            renewals: 0,
            ttl_ms: lease.ttl_ms,
            queue: Some(t.spec.queue.clone()),
        });
        let task = self.put(rev, now, t, Some(EventKind::Claimed), fx);
        Response::Claimed {
            task,
            lease,
            secret,
        }
    }

    /// The secret of the lease `token` made, while its attempt is in its task's history (0:
    /// claimed before secrets existed).
    pub fn secret_of(&self, token: Token) -> Option<LeaseSecret> {
        self.tokens.get(&token).map(|o| o.secret)
    }

    pub(super) fn remember_used_claim(&mut self, key: (String, String), token: Token) {
        if self.used_claims.insert(key.clone(), token).is_none() {
            self.used_order.push_back(key);
        }
        while self.used_order.len() > USED_CLAIMS_KEPT {
            let old = self.used_order.pop_front().expect("not empty");
            self.used_claims.remove(&old);
        }
    }

    /// Why `token` holds no live lease.
    pub fn lost_reason(&self, token: Token) -> LostReason {
        let Some(task) = self
            .tokens
            .get(&token)
            .and_then(|o| self.tasks.get(&o.task))
        else {
            return LostReason::Unknown;
        };
        match task.record(token).map(|r| r.outcome) {
            Some(AttemptOutcome::Expired) => LostReason::Expired {
                voters: task
                    .record(token)
                    .map(|r| r.expiry_voters.clone())
                    .unwrap_or_default(),
            },
            Some(AttemptOutcome::Released) => LostReason::Released,
            Some(AttemptOutcome::Failed) => LostReason::Failed,
            Some(AttemptOutcome::Cancelled) if task.state == TaskState::Cancelled => {
                LostReason::Cancelled
            }
            Some(_) => LostReason::Finished { state: task.state },
            None => LostReason::Unknown,
        }
    }

    pub(super) fn touch(&mut self, token: Token, fx: &mut Effects) -> Result<&Lease, LostReason> {
        if !self.leases.contains_key(&token) {
            return Err(self.lost_reason(token));
        }
        let l = self.leases.get_mut(&token).expect("checked");
        l.renewals += 1;
        if !l.votes.is_empty() {
            l.votes.clear();
            // The votes' evidence goes with them: a renewal won the race.
            if let Some(r) = self
                .tasks
                .get_mut(&l.task_id)
                .and_then(|t| Arc::make_mut(t).record_mut(token))
            {
                r.expiry_silence_ms.clear();
            }
        }
        fx.heard.push(HeardLease {
            token,
            renewals: l.renewals,
            ttl_ms: l.ttl_ms,
            queue: None,
        });
        Ok(l)
    }

    pub(super) fn renew(&mut self, token: Token, fx: &mut Effects) -> RenewOutcome {
        match self.touch(token, fx) {
            Ok(l) => RenewOutcome::Alive {
                renewals: l.renewals,
            },
            Err(reason) => RenewOutcome::Lost(reason),
        }
    }

    pub(super) fn progress(
        &mut self,
        rev: Revision,
        now: u64,
        token: Token,
        progress: &[u8],
        fx: &mut Effects,
    ) -> Response {
        let lease = match self.touch(token, fx) {
            Ok(l) => l.clone(),
            Err(reason) => return Response::Rejected(Rejection::LeaseLost { token, reason }),
        };
        let mut t = self
            .take(&lease.task_id)
            .expect("a live lease's task exists");
        t.progress = progress.to_vec();
        self.put(rev, now, t, Some(EventKind::Progress), fx);
        Response::Progressed { lease }
    }

    /// Ends the live lease `token`, recording `outcome` on its attempt.
    pub(super) fn end_lease(
        &mut self,
        rev: Revision,
        t: &mut Task,
        token: Token,
        outcome: AttemptOutcome,
        fx: &mut Effects,
    ) -> Lease {
        let lease = self.leases.remove(&token).expect("live lease");
        if !lease.claim_id.is_empty() {
            let key = (lease.worker_id.clone(), lease.claim_id.clone());
            self.claims.remove(&key);
            self.remember_used_claim(key, token);
        }
        debug_assert_eq!(t.lease, Some(token));
        t.lease = None;
        if let Some(r) = t.record_mut(token) {
            r.outcome = outcome;
            r.ended_rev = rev;
            r.renewals = lease.renewals;
        }
        fx.gone.push(token);
        fx.ended.push(EndedLease {
            token,
            task_id: t.spec.id.clone(),
            queue: t.spec.queue.clone(),
            outcome,
            ttl_ms: lease.ttl_ms,
        });
        lease
    }

    pub(super) fn vote(
        &mut self,
        rev: Revision,
        now: u64,
        voter: NodeId,
        votes: &[(Token, u64, Option<u64>)],
        configs: &VoterConfigs,
        fx: &mut Effects,
    ) -> Response {
        let mut expired = Vec::new();
        if !configs.iter().any(|c| c.contains(&voter)) {
            // Learners and removed nodes have no say.
            return Response::Rejected(Rejection::Malformed {
                why: format!("node {voter} is not a voter and cannot vote on expiry"),
            });
        }
        for &(token, renewals_seen, silence_ms) in votes {
            let Some(lease) = self.leases.get_mut(&token) else {
                continue;
            };
            if lease.renewals != renewals_seen {
                // A renewal was committed after the voter looked: it won the race.
                continue;
            }
            lease.votes.insert(voter);
            fx.votes.push(voter);
            if let Some(r) = self
                .tasks
                .get_mut(&lease.task_id)
                .and_then(|t| Arc::make_mut(t).record_mut(token))
            {
                r.expiry_silence_ms.retain(|(n, _)| *n != voter);
                if let Some(s) = silence_ms {
                    r.expiry_silence_ms.push((voter, s));
                    r.expiry_silence_ms.sort_unstable();
                }
            }
            if !quorum(&lease.votes, configs) {
                continue;
            }
            let voters: Vec<NodeId> = lease.votes.iter().copied().collect();
            let id = lease.task_id.clone();
            let mut t = self.take(&id).expect("a live lease's task exists");
            let lease = self.end_lease(rev, &mut t, token, AttemptOutcome::Expired, fx);
            if let Some(r) = t.record_mut(token) {
                r.expiry_voters = voters.clone();
                r.error = format!(
                    "lease expired after {} renewals (ttl {} ms), by votes of nodes {voters:?}",
                    lease.renewals, lease.ttl_ms
                );
            }
            let error = format!(
                "attempt {} lost its lease: no renewal within {} ms",
                lease.attempt, lease.ttl_ms
            );
            let kind = self.after_failure(now, &mut t, None, error);
            self.put(rev, now, t, Some(kind), fx);
            expired.push(token);
        }
        Response::Voted { expired }
    }
}
