// The caller's side of one call, run in a headless Chromium page and driven over the DevTools
// protocol by crates/sim/src/browser/page.rs. One RTCPeerConnection with one audio transceiver;
// the "microphone" is a Web Audio oscillator, silent until `speak`; what Chromium plays out of
// the remote track is recorded at 48 kHz by an AudioWorklet; `getStats()` is read every 100 ms.
(() => {
  const RATE = 48000;
  // Received audio louder than this (RMS of 10 ms, full scale 1.0) is speech.
  const SPEECH_RMS = 0.01;
  const WINDOW = RATE / 100;
  const STATS_EVERY_MS = 100;
  // Meta's Opus parameters (spec §8.1), set in the offer as a libwebrtc client sets them (SDP
  // munged before setLocalDescription). Chromium's own (minptime=10;useinbandfec=1) are refused
  // by the bridge: its Opus has minptime=20 and the WebRTC stack matches fmtp parameters.
  const META_OPUS_FMTP = 'maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;useinbandfec=1';
  const INBOUND_FIELDS = [
    'packetsReceived', 'packetsLost', 'packetsDiscarded', 'jitter', 'concealedSamples',
    'silentConcealedSamples', 'concealmentEvents', 'insertedSamplesForDeceleration',
    'removedSamplesForAcceleration', 'jitterBufferDelay', 'jitterBufferTargetDelay',
    'jitterBufferMinimumDelay', 'jitterBufferEmittedCount', 'totalSamplesReceived',
    'totalSamplesDuration', 'totalAudioEnergy', 'fecPacketsReceived', 'fecPacketsDiscarded',
  ];

  const call = {
    ctx: null, pc: null, gain: null, audio: null,
    chunks: [], recordStart: null, recorded: 0, windowSum: 0, windowFill: 0,
    // Context frame of each event: the first recorded frame, media connected (DTLS up).
    connectedFrame: null, connectedAt: null,
    stats: [], timer: null,
    windows: [], waiters: [],
  };
  const frameNow = () => Math.round(call.ctx.currentTime * RATE);

  // Lets every waiting `speech` check what has been recorded (or the recorder's error).
  function wakeWaiters() {
    call.waiters = call.waiters.filter((check) => !check());
  }

  function onChunk(samples) {
    call.chunks.push(samples);
    call.recorded += samples.length;
    for (const v of samples) {
      call.windowSum += v * v;
      if (++call.windowFill === WINDOW) {
        call.windows.push(Math.sqrt(call.windowSum / WINDOW) >= SPEECH_RMS);
        call.windowSum = 0;
        call.windowFill = 0;
      }
    }
    wakeWaiters();
  }

  // Records the remote track as the jitter buffer (NetEq) hands out each 10 ms for playout.
  // (A Web Audio tap of the track, an AudioWorklet before, crosses from the media element's
  // output clock to the AudioContext's through a FIFO that now and then inserted or dropped
  // 10 ms the jitter buffer never did, and damaged the score of 1 greeting in 10.)
  async function record(track) {
    // Room for 10 s of frames: a page starved of CPU reads late but loses nothing.
    const processor = new MediaStreamTrackProcessor({ track, maxBufferSize: 1000 });
    const reader = processor.readable.getReader();
    for (;;) {
      const { value: data, done } = await reader.read();
      if (done) return;
      if (data.sampleRate !== RATE) {
        call.recordError = `the track gives ${data.sampleRate} Hz, not ${RATE}`;
        data.close();
        wakeWaiters();
        return;
      }
      if (call.recordStart === null) call.recordStart = frameNow();
      const samples = new Float32Array(data.numberOfFrames);
      data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
      data.close();
      onChunk(samples);
    }
  }

  async function readStats() {
    if (!call.pc) return null;
    const report = await call.pc.getStats();
    let inbound = null;
    report.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'audio') inbound = s; });
    if (!inbound) return null;
    const row = { t: performance.now(), frame: frameNow() };
    for (const field of INBOUND_FIELDS) row[field] = inbound[field] ?? null;
    return row;
  }

  // Resolves with the onset (a frame of the recording, from 0) of the first received speech at
  // or after frame `after`, once `seconds` after that onset are recorded.
  function speech(after, seconds) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (call.recordError) {
          reject(new Error(call.recordError));
          return true;
        }
        const first = Math.ceil(after / WINDOW);
        const onset = call.windows.findIndex((loud, w) => loud && w >= first);
        if (onset < 0) return false;
        const onsetFrame = onset * WINDOW;
        if (call.recorded < onsetFrame + seconds * RATE) return false;
        resolve(onsetFrame);
        return true;
      };
      if (!check()) call.waiters.push(check);
    });
  }

  window.caller = {
    // Builds the connection and returns Chromium's offer once ICE gathering is complete
    // (Meta's offers carry every candidate: no trickle).
    async offer() {
      call.ctx = new AudioContext({ sampleRate: RATE, latencyHint: 'interactive' });
      await call.ctx.resume();
      const osc = call.ctx.createOscillator();
      osc.frequency.value = 220;
      call.gain = call.ctx.createGain();
      call.gain.gain.value = 0;
      const mic = call.ctx.createMediaStreamDestination();
      osc.connect(call.gain).connect(mic);
      osc.start();

      const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
      call.pc = pc;
      const track = mic.stream.getAudioTracks()[0];
      const transceiver = pc.addTransceiver(track, { direction: 'sendrecv', streams: [mic.stream] });
      // Like Meta's offer (spec §8.1): Opus and 8 kHz telephone-event only.
      const codecs = RTCRtpReceiver.getCapabilities('audio').codecs.filter((c) =>
        c.mimeType.toLowerCase() === 'audio/opus' ||
        (c.mimeType.toLowerCase() === 'audio/telephone-event' && c.clockRate === 8000));
      transceiver.setCodecPreferences(codecs);
      pc.ontrack = (event) => {
        const stream = event.streams[0] || new MediaStream([event.track]);
        // Chromium pulls remote WebRTC audio (out of its jitter buffer) for a media element.
        call.audio = new Audio();
        call.audio.srcObject = stream;
        call.audio.play().catch(() => {});
        record(event.track);
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === 'connected' && call.connectedFrame === null) {
          call.connectedFrame = frameNow();
          call.connectedAt = performance.now();
        }
      };
      call.timer = setInterval(async () => {
        const row = await readStats();
        if (row) call.stats.push(row);
      }, STATS_EVERY_MS);
      const gathered = new Promise((resolve) => {
        pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') resolve(); };
      });
      const offer = await pc.createOffer();
      const opus = /^a=rtpmap:(\d+) opus\/48000\/2$/im.exec(offer.sdp)[1];
      offer.sdp = offer.sdp.replace(new RegExp(`^a=fmtp:${opus} .*$`, 'm'), `a=fmtp:${opus} ${META_OPUS_FMTP}`);
      await pc.setLocalDescription(offer);
      if (pc.iceGatheringState !== 'complete') await gathered;
      return pc.localDescription.sdp;
    },

    async answer(sdp) {
      await call.pc.setRemoteDescription({ type: 'answer', sdp });
      return true;
    },

    speech,

    // The caller says something: the oscillator at a speaking level for `ms`. Returns how much
    // was recorded when the caller began (the AI's answer can only start after that).
    async speak(ms) {
      const began = call.recorded;
      const now = call.ctx.currentTime;
      call.gain.gain.setValueAtTime(0.3, now);
      call.gain.gain.setValueAtTime(0, now + ms / 1000);
      await new Promise((resolve) => setTimeout(resolve, ms));
      return began;
    },

    // Ends the call: the last stats, the recording (PCM16 48 kHz, base64) and the timeline.
    async finish() {
      clearInterval(call.timer);
      const last = await readStats();
      if (last) call.stats.push(last);
      call.pc.close();
      const pcm = new Int16Array(call.recorded);
      let at = 0;
      for (const chunk of call.chunks) {
        for (let i = 0; i < chunk.length; i++) {
          const v = Math.max(-1, Math.min(1, chunk[i]));
          pcm[at++] = v < 0 ? v * 32768 : v * 32767;
        }
      }
      const bytes = new Uint8Array(pcm.buffer);
      let binary = '';
      for (let i = 0; i < bytes.length; i += 0x8000) {
        binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
      }
      await call.ctx.close();
      return {
        rate: RATE,
        pcm: btoa(binary),
        recordStartFrame: call.recordStart,
        connectedFrame: call.connectedFrame,
        stats: call.stats,
      };
    },
  };
})();
