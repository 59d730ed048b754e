//! The input audio buffer: appends, the server VAD's speech start and stop, commits, and the
//! user turns and transcripts they make.

use super::*;

impl Session {
    pub(super) fn append(
        &mut self,
        now: Instant,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let audio = match event.get("audio") {
            Some(Value::String(audio)) => audio,
            Some(other) => return Err(ApiError::invalid_type("audio", "a string", other)),
            None => return Err(ApiError::missing("audio")),
        };
        let bytes = BASE64.decode(audio).map_err(|_| {
            ApiError::invalid_value(
                "audio",
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
            )
        })?;
        if bytes.len() > MAX_APPEND_BYTES {
            return Err(ApiError::invalid_value(
                "audio",
                "Invalid 'audio': an append may carry at most 15 MiB of audio.",
            ));
        }
        let start = self.input.len();
        self.effective
            .input_format
            .decode_into(&bytes, &mut self.carry, &mut self.input);
        if !self.configured {
            self.appended_before_configured += self.input.len() - start;
        }
        if let Some(probe) = &self.settings.probe {
            probe.audio_in(&self.id, now, &self.input[start..]);
        }
        let params = self.effective.turn.map(|turn| VadParams {
            threshold_rms: self.settings.vad_threshold_rms * turn.threshold / THRESHOLD_REFERENCE,
            silence_duration_ms: turn.silence_duration_ms,
        });
        let mut events = std::mem::take(&mut self.vad_events);
        events.clear();
        self.vad.feed(&self.input[start..], params, &mut events);
        for event in events.drain(..) {
            match event {
                VadEvent::Started { onset_ms } => self.speech_started(now, onset_ms, out),
                VadEvent::Stopped {
                    speech_end_ms,
                    detected_ms,
                } => self.speech_stopped(now, speech_end_ms, detected_ms, out),
            }
        }
        self.vad_events = events;
        Ok(())
    }

    pub(super) fn speech_started(&mut self, now: Instant, onset_ms: u64, out: &mut Vec<Output>) {
        let Some(turn) = self.effective.turn else {
            return;
        };
        // The padding cannot reach back past the start of the (uncommitted) buffer.
        let buffer_start_ms = self.buffer_start.div_ceil(SAMPLES_PER_MS) as u64;
        let audio_start_ms = onset_ms
            .saturating_sub(turn.prefix_padding_ms)
            .max(buffer_start_ms)
            .min(onset_ms);
        let item_id = item_id();
        self.speech_starts.push(audio_start_ms);
        self.idle_deadline = None;
        tracing::debug!(audio_start_ms, "speech started");
        self.emit(
            out,
            json!({"type": "input_audio_buffer.speech_started",
                   "audio_start_ms": audio_start_ms, "item_id": item_id}),
        );
        self.turn = Some(Turn {
            item_id,
            audio_start_ms,
        });
        if turn.interrupt_response
            && let Some(index) = self.active_default()
        {
            self.finish(now, index, Ending::Cancelled("turn_detected"), out);
        }
    }

    pub(super) fn speech_stopped(
        &mut self,
        now: Instant,
        speech_end_ms: u64,
        detected_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let (Some(config), Some(turn)) = (self.effective.turn, self.turn.take()) else {
            return;
        };
        tracing::debug!(audio_end_ms = detected_ms, "speech stopped");
        self.emit(
            out,
            json!({"type": "input_audio_buffer.speech_stopped",
                   "audio_end_ms": detected_ms, "item_id": turn.item_id}),
        );
        // start ≤ speech_end ≤ end ≤ input length, whatever the offsets say.
        let start = (turn.audio_start_ms as usize * SAMPLES_PER_MS)
            .max(self.buffer_start)
            .min(self.input.len());
        let end = (detected_ms as usize * SAMPLES_PER_MS)
            .min(self.input.len())
            .max(start);
        let speech_end = (speech_end_ms as usize * SAMPLES_PER_MS)
            .min(end)
            .max(start);
        self.user_turns += 1;
        self.commit_turn(now, turn.item_id, start..end, Some(start..speech_end), out);
        if config.create_response && self.active_default().is_none() {
            let scripted: Vec<ScriptedCall> = self
                .settings
                .script
                .lock()
                .iter()
                .filter(|call| call.on_user_turn == self.user_turns)
                .cloned()
                .collect();
            if scripted.is_empty() {
                self.start_response(now, Request::default(), out);
            } else {
                self.function_call_response(now, &scripted, out);
            }
        }
    }

    pub(super) fn commit(&mut self, now: Instant, out: &mut Vec<Output>) -> Result<(), ApiError> {
        let buffered = self.input.len() - self.buffer_start;
        let buffered_ms = buffered as f64 / SAMPLES_PER_MS as f64;
        if buffered_ms < MIN_COMMIT_MS {
            return Err(ApiError::new(
                "input_audio_buffer_commit_empty",
                format!(
                    "Error committing input audio buffer: buffer too small. Expected at least \
                     100ms of audio, but buffer only has {buffered_ms:.2}ms of audio."
                ),
                None,
            ));
        }
        // A commit in the middle of a VAD turn takes the turn's pre-allocated item id.
        let item_id = self.turn.take().map_or_else(item_id, |turn| turn.item_id);
        self.vad.reset();
        let range = self.buffer_start..self.input.len();
        self.commit_turn(now, item_id, range.clone(), Some(range), out);
        Ok(())
    }

    pub(super) fn clear_buffer(&mut self) {
        self.buffer_start = self.input.len();
        self.vad.reset();
        self.turn = None;
    }

    /// `committed`, then the user item (`added`, `done`); schedules its transcript if enabled.
    pub(super) fn commit_turn(
        &mut self,
        now: Instant,
        item_id: String,
        audio: Range<usize>,
        echo: Option<Range<usize>>,
        out: &mut Vec<Output>,
    ) {
        let previous = self.last_item_id();
        self.emit(
            out,
            json!({"type": "input_audio_buffer.committed",
                   "item_id": item_id, "previous_item_id": previous}),
        );
        let item = json!({"id": item_id, "object": "realtime.item", "type": "message",
                          "status": "completed", "role": "user",
                          "content": [{"type": "input_audio", "transcript": null}]});
        self.emit(
            out,
            json!({"type": "conversation.item.added", "previous_item_id": previous, "item": item}),
        );
        self.emit(
            out,
            json!({"type": "conversation.item.done", "previous_item_id": previous, "item": item}),
        );
        let ms = (audio.len() / SAMPLES_PER_MS) as u64;
        self.committed_ms += ms;
        self.buffer_start = self.buffer_start.max(audio.end);
        if self.effective.transcription {
            let turn = self.user_turns.max(1);
            let text = match self.settings.transcripts.len() {
                0 => format!("(caller speech {turn})"),
                n => self.settings.transcripts[(turn - 1) % n].clone(),
            };
            self.transcripts.push_back(PendingTranscript {
                due: now + TRANSCRIPTION_DELAY,
                item_id: item_id.clone(),
                seconds: ms as f64 / 1000.0,
                text,
            });
        }
        if echo.is_some() {
            self.last_turn = echo;
        }
        self.items.push(Item {
            id: item_id,
            json: item,
            role: Role::User,
            user_audio: Some(audio),
            assistant_samples: 0,
            has_audio: false,
        });
    }

    pub(super) fn emit_transcript(&mut self, pending: PendingTranscript, out: &mut Vec<Output>) {
        self.emit(
            out,
            json!({"type": "conversation.item.input_audio_transcription.delta",
                   "item_id": pending.item_id, "content_index": 0, "delta": pending.text}),
        );
        self.emit(
            out,
            json!({"type": "conversation.item.input_audio_transcription.completed",
                   "item_id": pending.item_id, "content_index": 0, "transcript": pending.text,
                   "usage": {"type": "duration", "seconds": pending.seconds}}),
        );
        if let Some(item) = self
            .items
            .iter_mut()
            .find(|item| item.id == pending.item_id)
            && let Some(part) = item.json.pointer_mut("/content/0/transcript")
        {
            *part = json!(pending.text);
        }
    }

    /// `idle_timeout_ms` ran out after the assistant finished: commit the silence and respond.
    pub(super) fn idle_timeout(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.idle_deadline = None;
        if !self.effective.turn.is_some_and(|t| t.server_vad)
            || self.vad.in_speech()
            || self.active_default().is_some()
        {
            return;
        }
        let item_id = item_id();
        let range = self.buffer_start..self.input.len();
        self.emit(
            out,
            json!({"type": "input_audio_buffer.timeout_triggered",
                   "audio_start_ms": range.start / SAMPLES_PER_MS,
                   "audio_end_ms": range.end / SAMPLES_PER_MS, "item_id": item_id}),
        );
        self.vad.reset();
        self.commit_turn(now, item_id, range, None, out);
        self.start_response(now, Request::default(), out);
    }

    // ---- conversation items ----
}
