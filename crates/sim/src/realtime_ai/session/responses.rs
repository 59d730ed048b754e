//! Responses: `response.create` and `response.cancel`, what a response says (echo, tone,
//! speech, scripted function calls, tool answers), its paced audio and its end.

use super::*;
use std::sync::atomic::Ordering::SeqCst;

impl Session {
    /// The active response that writes to the default conversation (at most one).
    pub(super) fn active_default(&self) -> Option<usize> {
        self.responses.iter().position(|r| r.in_conversation)
    }

    pub(super) fn response_create(
        &mut self,
        now: Instant,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let request = self.parse_request(event)?;
        if !request.out_of_band
            && let Some(index) = self.active_default()
        {
            self.early_response_creates += 1;
            return Err(ApiError::new(
                "conversation_already_has_active_response",
                format!(
                    "Conversation already has an active response in progress: {}. Wait until the \
                     response is finished before creating a new one.",
                    self.responses[index].id
                ),
                None,
            ));
        }
        if self.audio_produced
            && let Some(voice) = &request.voice
            && *voice != self.effective.voice
        {
            return Err(ApiError::invalid_value(
                "response.audio.output.voice",
                "Cannot update a conversation's voice if assistant audio is present.",
            ));
        }
        self.start_response(now, request, out);
        Ok(())
    }

    pub(super) fn parse_request(&self, event: &Map<String, Value>) -> Result<Request, ApiError> {
        let params = match event.get("response") {
            None | Some(Value::Null) => return Ok(Request::default()),
            Some(Value::Object(params)) => params,
            Some(other) => return Err(ApiError::invalid_type("response", "an object", other)),
        };
        if let Some(key) = params
            .keys()
            .find(|key| !RESPONSE_KEYS.contains(&key.as_str()))
        {
            return Err(ApiError::unknown(&format!("response.{key}")));
        }
        let mut request = Request::default();
        if let Some(conversation) = params.get("conversation") {
            match conversation.as_str() {
                Some("auto") => {}
                Some("none") => request.out_of_band = true,
                _ => {
                    return Err(ApiError::not_one_of(
                        "response.conversation",
                        conversation,
                        &["auto", "none"],
                    ));
                }
            }
        }
        if let Some(instructions) = params.get("instructions") {
            match instructions {
                Value::String(text) => request.instructions = Some(text.clone()),
                other => {
                    return Err(ApiError::invalid_type(
                        "response.instructions",
                        "a string",
                        other,
                    ));
                }
            }
        }
        if let Some(modalities) = params.get("output_modalities") {
            cfg::validate_modalities("response.output_modalities", modalities)?;
            request.output_modalities = Some(modalities.clone());
        }
        if let Some(audio) = params.get("audio") {
            let Value::Object(audio) = audio else {
                return Err(ApiError::invalid_type("response.audio", "an object", audio));
            };
            if let Some(key) = audio.keys().find(|key| *key != "output") {
                return Err(ApiError::unknown(&format!("response.audio.{key}")));
            }
            if let Some(output) = audio.get("output") {
                let Value::Object(output) = output else {
                    return Err(ApiError::invalid_type(
                        "response.audio.output",
                        "an object",
                        output,
                    ));
                };
                if let Some(key) = output
                    .keys()
                    .find(|key| *key != "format" && *key != "voice")
                {
                    return Err(ApiError::unknown(&format!("response.audio.output.{key}")));
                }
                if let Some(format) = output.get("format") {
                    cfg::validate_format("response.audio.output.format", format)?;
                    request.format = Some(format.clone());
                }
                if let Some(voice) = output.get("voice") {
                    cfg::validate_voice("response.audio.output.voice", voice)?;
                    request.voice = Some(voice.clone());
                }
            }
        }
        if let Some(tokens) = params.get("max_output_tokens") {
            cfg::validate_max_output_tokens("response.max_output_tokens", tokens)?;
            request.max_output_tokens = Some(tokens.clone());
        }
        if let Some(tools) = params.get("tools") {
            cfg::validate_tools("response.tools", tools)?;
        }
        if let Some(choice) = params.get("tool_choice") {
            cfg::validate_tool_choice("response.tool_choice", choice)?;
        }
        if let Some(input) = params.get("input")
            && !input.is_array()
        {
            return Err(ApiError::invalid_type("response.input", "an array", input));
        }
        if let Some(prompt) = params.get("prompt")
            && !(prompt.is_null() || prompt.is_object())
        {
            return Err(ApiError::invalid_type(
                "response.prompt",
                "an object",
                prompt,
            ));
        }
        match params.get("metadata") {
            None | Some(Value::Null) => {}
            Some(Value::Object(pairs)) => {
                let valid = pairs.len() <= 16
                    && pairs
                        .iter()
                        .all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|v| v.len() <= 512));
                if !valid {
                    return Err(ApiError::invalid_value(
                        "response.metadata",
                        "Invalid 'response.metadata': at most 16 string pairs (keys up to 64 characters, values up to 512).",
                    ));
                }
                request.metadata = params.get("metadata").cloned();
            }
            Some(other) => {
                return Err(ApiError::invalid_type(
                    "response.metadata",
                    "an object",
                    other,
                ));
            }
        }
        Ok(request)
    }

    /// A response made of function calls only (§8.1, §12.4), emitted at once.
    pub(super) fn function_call_response(
        &mut self,
        now: Instant,
        calls: &[ScriptedCall],
        out: &mut Vec<Output>,
    ) {
        let response_id = new_id("resp_", 21);
        let mut output = Vec::new();
        self.emit(
            out,
            json!({"type": "response.created", "response": {
                "object": "realtime.response", "id": response_id, "status": "in_progress",
                "status_details": null, "output": [], "conversation_id": self.conversation_id,
                "output_modalities": ["audio"], "usage": null, "metadata": null}}),
        );
        for (index, call) in calls.iter().enumerate() {
            let item_id = item_id();
            let call_id = new_id("call_", 16);
            let arguments = call.arguments.to_string();
            let added = json!({"id": item_id, "object": "realtime.item", "type": "function_call",
                               "status": "in_progress", "name": call.name, "call_id": call_id,
                               "arguments": ""});
            self.emit(
                out,
                json!({"type": "response.output_item.added", "response_id": response_id,
                       "output_index": index, "item": added}),
            );
            let previous = self.last_item_id();
            self.emit(
                out,
                json!({"type": "conversation.item.added", "previous_item_id": previous, "item": added}),
            );
            self.emit(
                out,
                json!({"type": "response.function_call_arguments.delta", "response_id": response_id,
                       "item_id": item_id, "output_index": index, "call_id": call_id,
                       "delta": arguments}),
            );
            self.emit(
                out,
                json!({"type": "response.function_call_arguments.done", "response_id": response_id,
                       "item_id": item_id, "output_index": index, "call_id": call_id,
                       "name": call.name, "arguments": arguments}),
            );
            let done = json!({"id": item_id, "object": "realtime.item", "type": "function_call",
                              "status": "completed", "name": call.name, "call_id": call_id,
                              "arguments": arguments});
            self.emit(
                out,
                json!({"type": "response.output_item.done", "response_id": response_id,
                       "output_index": index, "item": done}),
            );
            self.emit(
                out,
                json!({"type": "conversation.item.done", "previous_item_id": previous, "item": done}),
            );
            self.items.push(Item {
                id: item_id.clone(),
                json: done.clone(),
                role: Role::Tool,
                user_audio: None,
                assistant_samples: 0,
                has_audio: false,
            });
            self.call_ids.insert(call_id.clone());
            self.call_names.insert(call_id.clone(), call.name.clone());
            self.function_calls.push(FunctionCallRecord {
                call_id,
                name: call.name.clone(),
                arguments,
                response_id: response_id.clone(),
            });
            output.push(done);
        }
        self.records.push(ResponseRecord {
            id: response_id.clone(),
            item_id: String::new(),
            produced_ms: 0,
            status: "completed".into(),
            created_at: now,
            first_delta_at: None,
        });
        self.emit(
            out,
            json!({"type": "response.done", "response": {
                "object": "realtime.response", "id": response_id, "status": "completed",
                "status_details": null, "output": output, "conversation_id": self.conversation_id,
                "output_modalities": ["audio"], "metadata": null,
                "usage": {"total_tokens": 40, "input_tokens": 30, "output_tokens": 10}}}),
        );
    }

    pub(super) fn start_response(&mut self, now: Instant, request: Request, out: &mut Vec<Output>) {
        let (source, label) = match &self.settings.mode {
            AiMode::Silent => return,
            AiMode::Echo => match &self.last_turn {
                Some(range) => (Source::Echo(range.clone()), "(echo)"),
                None => (tone(FALLBACK_TONE_HZ, FALLBACK_TONE), "(tone)"),
            },
            AiMode::Tone { hz, duration } => (tone(*hz, *duration), "(tone)"),
            AiMode::Speech(pcm) => (Source::Speech(pcm.clone()), "(speech)"),
        };
        // After tool results, the answer "speaks" them: a short tone whose transcript carries
        // the outputs verbatim.
        let unspoken: Vec<String> = self.unspoken_outputs.drain(..).collect();
        let (source, label, label_once) = if unspoken.is_empty() {
            (source, label.to_owned(), false)
        } else {
            (
                tone(FALLBACK_TONE_HZ, TOOL_ANSWER_TONE),
                format!("Result: {}", unspoken.join(" ")),
                true,
            )
        };
        let output_modalities = request.output_modalities.unwrap_or_else(|| {
            self.config
                .get("output_modalities")
                .cloned()
                .unwrap_or(json!(["audio"]))
        });
        let text_only = output_modalities.get(0).and_then(Value::as_str) == Some("text");
        let format_json = request
            .format
            .unwrap_or_else(|| self.effective.output_format_json.clone());
        let instructions_chars = request.instructions.as_deref().map_or_else(
            || {
                self.config
                    .get("instructions")
                    .and_then(Value::as_str)
                    .map_or(0, str::len)
            },
            str::len,
        );
        let delta_ms = self.settings.delta_ms.max(1);
        let active = Active {
            id: new_id("resp_", 21),
            item_id: item_id(),
            record: self.records.len(),
            in_conversation: !request.out_of_band,
            text_only,
            format: AudioFormat::from_config(Some(&format_json)),
            format_json,
            voice: request
                .voice
                .unwrap_or_else(|| self.effective.voice.clone()),
            output_modalities,
            max_output_tokens: request.max_output_tokens.unwrap_or_else(|| {
                self.config
                    .get("max_output_tokens")
                    .cloned()
                    .unwrap_or(json!("inf"))
            }),
            metadata: request.metadata.unwrap_or(Value::Null),
            instructions_chars,
            source,
            label,
            label_once,
            emitted: 0,
            chunks_sent: 0,
            first_at: now + self.settings.first_audio_latency,
            interval: Duration::from_secs_f64(
                f64::from(delta_ms) / 1000.0 / f64::from(self.settings.production_speed),
            ),
            transcript: String::new(),
        };
        tracing::debug!(response = %active.id, out_of_band = request.out_of_band, "response created");
        self.records.push(ResponseRecord {
            id: active.id.clone(),
            item_id: active.item_id.clone(),
            produced_ms: 0,
            status: "in_progress".into(),
            created_at: now,
            first_delta_at: None,
        });
        self.idle_deadline = None;
        let response = self.response_json(&active, "in_progress", Value::Null, vec![], Value::Null);
        self.emit(
            out,
            json!({"type": "response.created", "response": response}),
        );
        let item = json!({"id": active.item_id, "object": "realtime.item", "type": "message",
                          "status": "in_progress", "role": "assistant", "content": []});
        self.emit(
            out,
            json!({"type": "response.output_item.added", "response_id": active.id,
                   "output_index": 0, "item": item}),
        );
        if active.in_conversation {
            let previous = self.last_item_id();
            self.items.push(Item {
                id: active.item_id.clone(),
                json: item.clone(),
                role: Role::Assistant,
                user_audio: None,
                assistant_samples: 0,
                has_audio: false,
            });
            self.emit(
                out,
                json!({"type": "conversation.item.added", "previous_item_id": previous, "item": item}),
            );
        }
        let part = if text_only {
            json!({"type": "text", "text": ""})
        } else {
            json!({"type": "audio", "transcript": ""})
        };
        self.emit(
            out,
            json!({"type": "response.content_part.added", "response_id": active.id,
                   "item_id": active.item_id, "output_index": 0, "content_index": 0, "part": part}),
        );
        self.responses.push(active);
        let failing = &self.settings.failing_responses;
        if failing
            .fetch_update(SeqCst, SeqCst, |left| left.checked_sub(1))
            .is_ok()
        {
            let index = self.responses.len() - 1;
            self.finish(now, index, Ending::Failed, out);
        }
    }

    /// Sends the next due delta of response `index`, and ends it when its audio is out.
    pub(super) fn step(&mut self, now: Instant, index: usize, out: &mut Vec<Output>) {
        let chunk = self.settings.delta_ms.max(1) as usize * SAMPLES_PER_MS;
        let response = &self.responses[index];
        let total = response.source.len();
        if response.text_only || response.emitted >= total {
            if response.text_only {
                let label = response.label.clone();
                let ids = json!({"type": "response.output_text.delta", "response_id": response.id,
                                 "item_id": response.item_id, "output_index": 0, "content_index": 0,
                                 "delta": label});
                self.emit(out, ids);
                self.responses[index].transcript.push_str(&label);
            }
            self.finish(now, index, Ending::Completed, out);
            return;
        }
        let start = response.emitted;
        let end = (start + chunk).min(total);
        let mut bytes = Vec::with_capacity((end - start) * 2);
        let probe = self.settings.probe.as_deref();
        match &response.source {
            Source::Echo(range) => {
                let from = range.start + start;
                let samples = self.input.get(from..range.start + end).unwrap_or(&[]);
                response.format.encode(samples, &mut bytes);
                if let Some(probe) = probe {
                    probe.audio_out(&self.id, now, samples);
                }
            }
            Source::Tone { hz, .. } => {
                let samples: Vec<i16> = (start..end).map(|i| tone_sample(*hz, i)).collect();
                response.format.encode(&samples, &mut bytes);
                if let Some(probe) = probe {
                    probe.audio_out(&self.id, now, &samples);
                }
            }
            Source::Speech(pcm) => {
                let samples = pcm.get(start..end).unwrap_or(&[]);
                response.format.encode(samples, &mut bytes);
                if let Some(probe) = probe {
                    probe.audio_out(&self.id, now, samples);
                }
            }
        }
        let text = if response.chunks_sent == 0 {
            response.label.clone()
        } else if response.label_once {
            String::new()
        } else {
            format!(" {}", response.label)
        };
        self.emit(
            out,
            json!({"type": "response.output_audio.delta", "response_id": response.id,
                   "item_id": response.item_id, "output_index": 0, "content_index": 0,
                   "delta": BASE64.encode(&bytes)}),
        );
        self.emit(
            out,
            json!({"type": "response.output_audio_transcript.delta", "response_id": response.id,
                   "item_id": response.item_id, "output_index": 0, "content_index": 0,
                   "delta": text}),
        );
        tracing::trace!(response = %response.id, samples = end - start, "audio delta");
        let in_conversation = response.in_conversation;
        let item_id = response.item_id.clone();
        let record = response.record;
        let response = &mut self.responses[index];
        response.emitted = end;
        response.chunks_sent += 1;
        response.transcript.push_str(&text);
        self.audio_produced = true;
        if let Some(record) = self.records.get_mut(record) {
            record.produced_ms = (end / SAMPLES_PER_MS) as u64;
            record.first_delta_at.get_or_insert(now);
        }
        if in_conversation && let Some(item) = self.items.iter_mut().find(|item| item.id == item_id)
        {
            item.assistant_samples += end - start;
            item.has_audio = true;
        }
        if end >= total {
            self.finish(now, index, Ending::Completed, out);
        }
    }

    /// Closes the open part and item and sends `response.done` (then `rate_limits.updated`).
    pub(super) fn finish(
        &mut self,
        now: Instant,
        index: usize,
        ending: Ending,
        out: &mut Vec<Output>,
    ) {
        let response = self.responses.remove(index);
        let ids = |kind: &str| {
            json!({"type": kind, "response_id": response.id, "item_id": response.item_id,
                   "output_index": 0, "content_index": 0})
        };
        let content = if response.text_only {
            let mut done = ids("response.output_text.done");
            done["text"] = json!(response.transcript);
            self.emit(out, done);
            let mut part = ids("response.content_part.done");
            part["part"] = json!({"type": "text", "text": response.transcript});
            self.emit(out, part);
            json!([{"type": "output_text", "text": response.transcript}])
        } else {
            self.emit(out, ids("response.output_audio.done"));
            let mut done = ids("response.output_audio_transcript.done");
            done["transcript"] = json!(response.transcript);
            self.emit(out, done);
            let mut part = ids("response.content_part.done");
            part["part"] = json!({"type": "audio", "transcript": response.transcript});
            self.emit(out, part);
            json!([{"type": "output_audio", "transcript": response.transcript}])
        };
        let (status, item_status, details) = match ending {
            Ending::Completed => ("completed", "completed", Value::Null),
            Ending::Cancelled(reason) => (
                "cancelled",
                "incomplete",
                json!({"type": "cancelled", "reason": reason}),
            ),
            Ending::Failed => (
                "failed",
                "incomplete",
                json!({"type": "failed", "error": {"type": "server_error", "code": null}}),
            ),
        };
        let item = json!({"id": response.item_id, "object": "realtime.item", "type": "message",
                          "status": item_status, "role": "assistant", "content": content});
        self.emit(
            out,
            json!({"type": "response.output_item.done", "response_id": response.id,
                   "output_index": 0, "item": item}),
        );
        if response.in_conversation
            && let Some(position) = self.find_item(&response.item_id)
        {
            self.items[position].json = item.clone();
            let previous = self.previous_of(position);
            self.emit(
                out,
                json!({"type": "conversation.item.done", "previous_item_id": previous, "item": item}),
            );
        }
        let usage = self.usage(&response);
        let total_tokens = usage["total_tokens"].as_u64().unwrap_or(0);
        let body = self.response_json(&response, status, details, vec![item], usage);
        self.emit(out, json!({"type": "response.done", "response": body}));
        self.emit(
            out,
            json!({"type": "rate_limits.updated", "rate_limits": [
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 40000, "remaining": 40000u64.saturating_sub(total_tokens),
                 "reset_seconds": 0.5},
            ]}),
        );
        let produced_ms = (response.emitted / SAMPLES_PER_MS) as u64;
        if let Some(record) = self.records.get_mut(response.record) {
            record.status = status.into();
            record.produced_ms = produced_ms;
        }
        tracing::debug!(response = %response.id, status, produced_ms, "response done");
        // The idle timer starts when the assistant's audio would have finished playing (§4.2),
        // unless the caller is already talking (a barge-in).
        if response.in_conversation
            && self.turn.is_none()
            && let Some(idle_ms) = self.effective.turn.and_then(|t| t.idle_timeout_ms)
        {
            self.idle_deadline = Some(now + Duration::from_millis(produced_ms + idle_ms));
        }
    }

    pub(super) fn response_json(
        &self,
        response: &Active,
        status: &str,
        details: Value,
        output: Vec<Value>,
        usage: Value,
    ) -> Value {
        json!({
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": if response.in_conversation {
                Value::String(self.conversation_id.clone())
            } else {
                Value::Null
            },
            "output_modalities": response.output_modalities,
            "max_output_tokens": response.max_output_tokens,
            "audio": {"output": {"format": response.format_json, "voice": response.voice}},
            "usage": usage,
            "metadata": response.metadata,
        })
    }

    /// Plausible token counts: audio at 10 tokens/s in and 20 tokens/s out, text at 4 chars a token.
    pub(super) fn usage(&self, response: &Active) -> Value {
        let input_audio = self.committed_ms / 100;
        let input_text = (response.instructions_chars / 4 + self.items.len() * 8) as u64 + 4;
        let output_audio = (response.emitted / SAMPLES_PER_MS / 50) as u64;
        let output_text = response.transcript.len().div_ceil(4) as u64;
        let input = input_audio + input_text;
        let output = output_audio + output_text;
        json!({
            "total_tokens": input + output,
            "input_tokens": input,
            "output_tokens": output,
            "input_token_details": {
                "text_tokens": input_text, "audio_tokens": input_audio, "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
        })
    }

    pub(super) fn response_cancel(
        &mut self,
        now: Instant,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let index = match event.get("response_id") {
            None | Some(Value::Null) => self.active_default(),
            Some(Value::String(id)) => self.responses.iter().position(|r| r.id == *id),
            Some(other) => return Err(ApiError::invalid_type("response_id", "a string", other)),
        };
        let index = index.ok_or_else(|| {
            ApiError::new(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                None,
            )
        })?;
        self.finish(now, index, Ending::Cancelled("client_cancelled"), out);
        Ok(())
    }
}

pub(super) fn tone(hz: f32, duration: Duration) -> Source {
    let samples = (duration.as_secs_f64() * 1000.0 * SAMPLES_PER_MS as f64).round() as usize;
    Source::Tone { hz, samples }
}

/// "60 minutes", "90 seconds", "250 milliseconds": the session cap as the expiry message says it.
pub(super) fn describe(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(60_000) {
        let minutes = ms / 60_000;
        format!("{minutes} minute{}", if minutes == 1 { "" } else { "s" })
    } else if ms.is_multiple_of(1000) {
        format!("{} seconds", ms / 1000)
    } else {
        format!("{ms} milliseconds")
    }
}
