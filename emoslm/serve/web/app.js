// emoslm web page: talk to the agent over /v1/realtime (OpenAI Realtime event names, PCM16) and watch
// the emotion trajectory grow. Plain JS, nothing fetched from the internet.
"use strict";

const COLORS = { happy: "#e0a800", sad: "#3b6fd1", anger: "#d23b3b", fear: "#8a4fd1", neutral: "#888888",
                 surprise: "#1aa39a", disgust: "#6b8e23" };
const OUT_RATE = 24000;
const $ = (id) => document.getElementById(id);

const state = {
  ws: null, ctx: null, capture: null, pending: [], pendingLength: 0,
  turns: [],            // {n, tag, confidence, valence, arousal, firstAudio}
  // by id: a new turn's response.created can come before the cut reply's response.done (barge-in)
  replies: new Map(),   // response id → the assistant turn being streamed
  users: new Map(),     // item id → the user turn (its transcript and emotion come after speech_stopped)
  stoppedAt: null,      // performance.now() at speech_stopped (client-side latency)
  playAt: 0, sources: [],
  playing: null,        // the reply whose audio was scheduled last: what a barge-in truncates
};

function setStatus(text, on) { const s = $("status"); s.textContent = text; s.className = "status " + (on ? "on" : "off"); }

// --- connection ------------------------------------------------------------------------------------
function audioContext() {
  if (!state.ctx) state.ctx = new AudioContext();
  if (state.ctx.state === "suspended") state.ctx.resume();
  return state.ctx;
}

function connect() {
  if (state.ws && state.ws.readyState <= 1) return Promise.resolve(state.ws);
  const key = $("key").value.trim();
  const protocols = ["realtime"].concat(key ? ["openai-insecure-api-key." + key] : []);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/realtime`, protocols);
  state.ws = ws;
  return new Promise((resolve, reject) => {
    ws.onopen = () => {
      setStatus("connected", true);
      send({ type: "session.update", session: {
        audio: { input: { format: { type: "audio/pcm", rate: audioContext().sampleRate } } },
        emoslm: Object.assign({ think: true }, $("lang").value === "auto" ? {} : { lang: $("lang").value }) } });
      resolve(ws);
    };
    ws.onerror = () => { setStatus("cannot connect (is the API key right?)", false); reject(new Error("ws")); };
    ws.onclose = () => setStatus("not connected", false);
    ws.onmessage = (m) => onEvent(JSON.parse(m.data));
  });
}

function send(event) { if (state.ws && state.ws.readyState === 1) state.ws.send(JSON.stringify(event)); }

function pcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) out[i] = Math.max(-1, Math.min(1, samples[i])) * 32767;
  let binary = "";
  const bytes = new Uint8Array(out.buffer);
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function fromPcm16(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const ints = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  return Float32Array.from(ints, (v) => v / 32767);
}

function appendAudio(samples) {  // batches of 20 ms
  state.pending.push(samples); state.pendingLength += samples.length;
  const block = Math.round(audioContext().sampleRate / 50);
  if (state.pendingLength < block) return;
  const joined = new Float32Array(state.pendingLength);
  let at = 0; for (const p of state.pending) { joined.set(p, at); at += p.length; }
  state.pending = []; state.pendingLength = 0;
  send({ type: "input_audio_buffer.append", audio: pcm16(joined) });
}

// --- input: microphone or a file -------------------------------------------------------------------
async function toggleMic() {
  if (state.capture) { stopMic(); return; }
  await connect();
  const ctx = audioContext();
  if (!state.workletReady) { await ctx.audioWorklet.addModule("/static/worklet.js"); state.workletReady = true; }
  // echo cancellation keeps the reply coming out of the speakers from barging in on itself;
  // noise suppression and gain control would reshape the very voice whose emotion is being heard
  const stream = await navigator.mediaDevices.getUserMedia({ audio: {
    channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false } });
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "emoslm-capture");
  node.port.onmessage = (m) => appendAudio(m.data);
  source.connect(node);
  state.capture = { stream, source, node };
  $("mic").textContent = "■ Stop microphone"; $("mic").classList.add("live");
}

function stopMic() {
  const c = state.capture; if (!c) return;
  c.source.disconnect(); c.node.disconnect(); c.stream.getTracks().forEach((t) => t.stop());
  state.capture = null; $("mic").textContent = "● Start microphone"; $("mic").classList.remove("live");
}

async function sendFile(file) {
  await connect();
  const ctx = audioContext();
  const decoded = await ctx.decodeAudioData(await file.arrayBuffer());
  const samples = decoded.getChannelData(0);
  const block = Math.round(ctx.sampleRate / 50);
  for (let i = 0; i < samples.length; i += block) send({ type: "input_audio_buffer.append", audio: pcm16(samples.subarray(i, i + block)) });
  const silence = new Float32Array(block);
  for (let i = 0; i < 60; i++) send({ type: "input_audio_buffer.append", audio: pcm16(silence) });  // 1.2 s: the turn ends
}

// --- output: the conversation, the audio, the chart ------------------------------------------------
function addTurn(role, text) {
  const li = document.createElement("li");
  li.className = "turn " + role;
  li.innerHTML = `<div class="who">${role === "user" ? "you" : "emoslm"}</div><div class="text"></div>`;
  li.querySelector(".text").textContent = text || "";
  $("transcript").appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function play(samples) {
  const ctx = audioContext();
  const buffer = ctx.createBuffer(1, samples.length, OUT_RATE);
  buffer.copyToChannel(samples, 0);
  const source = ctx.createBufferSource();
  source.buffer = buffer; source.connect(ctx.destination);
  state.playAt = Math.max(state.playAt, ctx.currentTime + 0.02);
  const scheduled = { start: state.playAt, dur: buffer.duration };
  source.start(state.playAt); state.playAt += buffer.duration;
  state.sources.push(source);
  return scheduled;
}

function stopPlayback() { state.sources.forEach((s) => { try { s.stop(); } catch (e) { /* ended */ } }); state.sources = []; state.playAt = 0; }

// How much of a reply's audio the user has heard: what the server keeps in the history after a barge-in.
function playedMs(r) {
  const now = audioContext().currentTime;
  return Math.floor(r.schedule.reduce((ms, c) => ms + Math.max(0, Math.min(now - c.start, c.dur)) * 1000, 0));
}

// The user talks over the reply: stop it, and tell the server how much was played (as OpenAI's clients do).
function interruptPlayback() {
  const r = state.playing;
  if (r && r.item && state.ctx && state.ctx.currentTime < state.playAt) {
    send({ type: "conversation.item.truncate", item_id: r.item, content_index: 0, audio_end_ms: playedMs(r) });
  }
  if (r) r.cut = true;  // audio of it still on the way is not played
  state.playing = null;
  stopPlayback();
}

function wavBlob(chunks) {
  const length = chunks.reduce((n, c) => n + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * length));
  const text = (at, s) => { for (let i = 0; i < s.length; i++) view.setUint8(at + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * length, true); text(8, "WAVEfmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, OUT_RATE, true); view.setUint32(28, OUT_RATE * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * length, true);
  let at = 44;
  for (const c of chunks) for (const v of c) { view.setInt16(at, Math.max(-1, Math.min(1, v)) * 32767, true); at += 2; }
  return new Blob([view], { type: "audio/wav" });
}

function startReply(responseId) {
  const li = addTurn("assistant", "");
  const think = document.createElement("details");
  think.className = "think"; think.hidden = !$("show-think").checked;
  think.innerHTML = "<summary>think</summary><div class='body'></div>";
  li.appendChild(think);
  const latency = document.createElement("div"); latency.className = "latency"; li.appendChild(latency);
  state.replies.set(responseId, { id: responseId, li, think, latency, chunks: [], schedule: [], item: null,
                                  first: null, turn: null });
}

function userTurn(itemId) {
  if (!state.users.has(itemId)) state.users.set(itemId, addTurn("user", ""));
  return state.users.get(itemId);
}

function onEvent(e) {
  const r = state.replies.get(e.response_id || (e.response && e.response.id));
  switch (e.type) {
    case "input_audio_buffer.speech_started":
      interruptPlayback();
      $("partial").textContent = "(listening…)";
      break;
    case "input_audio_buffer.speech_stopped":
      state.stoppedAt = performance.now();
      userTurn(e.item_id).querySelector(".text").textContent =
        $("partial").textContent.replace("(listening…)", "") || "…";
      $("partial").textContent = "";
      break;
    case "emoslm.transcript.partial": $("partial").textContent = e.text; break;
    case "emoslm.queue": $("partial").textContent = `(${e.ahead} ahead of you: the model is answering others)`; break;
    case "conversation.item.input_audio_transcription.completed":
      userTurn(e.item_id).querySelector(".text").textContent = e.transcript;
      break;
    case "response.created": startReply(e.response.id); break;
    case "emoslm.emotion": {
      const turn = onEmotion(e.estimate, userTurn(e.item_id));
      if (r) r.turn = turn;
      break;
    }
    case "emoslm.think.delta": if (r) r.think.querySelector(".body").textContent += e.delta; break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      if (r) r.li.querySelector(".text").textContent += e.delta; break;
    case "response.output_audio.delta": {
      if (!r || r.cut) break;
      const samples = fromPcm16(e.delta);
      if (r.first === null) {
        r.first = state.stoppedAt === null ? null : (performance.now() - state.stoppedAt) / 1000;
        r.server = e.emoslm ? e.emoslm.t : null;
        showLatency(r);
      }
      r.item = e.item_id; r.li.dataset.item = e.item_id; r.chunks.push(samples); r.schedule.push(play(samples)); state.playing = r;
      break;
    }
    case "response.done": {
      if (!r) break;
      const status = e.response.status;
      if (r.chunks.length) {
        const audio = document.createElement("audio");
        audio.controls = true; audio.src = URL.createObjectURL(wavBlob(r.chunks));
        r.li.appendChild(audio);
      }
      if (status !== "completed") {
        r.latency.textContent += ` · ${status}`;
        const heard = e.response.output && e.response.output[0] && e.response.output[0].content[0];
        if (heard && heard.transcript !== undefined) r.li.querySelector(".text").textContent = heard.transcript;  // what was heard
      }
      if (r.turn && r.turn.firstAudio === undefined && r.server !== undefined) { r.turn.firstAudio = r.server; drawTable(); }
      state.replies.delete(r.id);
      break;
    }
    case "conversation.item.truncated": {
      const cut = [...document.querySelectorAll(".turn.assistant")].find((li) => li.dataset.item === e.item_id);
      if (cut) cut.querySelector(".latency").textContent += ` · heard ${(e.audio_end_ms / 1000).toFixed(1)} s`;
      break;
    }
    case "error": {
      const li = addTurn("assistant", e.error.message); li.classList.add("error"); break;
    }
    default: break;
  }
}

function showLatency(r) {
  const parts = [];
  if (r.server !== null && r.server !== undefined) parts.push(`first audio ${r.server.toFixed(2)} s after you stopped`);
  if (r.first !== null) parts.push(`(${r.first.toFixed(2)} s here)`);
  r.latency.textContent = parts.join(" ");
}

function onEmotion(est, userLi) {
  const turn = { n: state.turns.length + 1, tag: est.tag, confidence: est.confidence, valence: est.valence, arousal: est.arousal };
  state.turns.push(turn);
  const chip = document.createElement("span");
  chip.className = "chip"; chip.style.background = COLORS[est.tag] || "#555"; chip.textContent = est.tag;
  userLi.querySelector(".who").appendChild(chip);
  drawChart(); drawPlane(); drawTable();
  return turn;
}

function drawChart() {
  const c = $("chart"), g = c.getContext("2d"), W = c.width, H = c.height, pad = 34;
  g.clearRect(0, 0, W, H);
  const n = state.turns.length, x = (i) => pad + (n <= 1 ? 0.5 : i / (n - 1)) * (W - 2 * pad);
  const y = (v) => H / 2 - v * (H / 2 - pad);
  g.strokeStyle = "#ddd"; g.beginPath(); g.moveTo(pad, y(0)); g.lineTo(W - pad, y(0)); g.stroke();
  g.fillStyle = "#888"; g.font = "11px sans-serif";
  g.fillText("+1", 6, y(1) + 4); g.fillText("0", 12, y(0) + 4); g.fillText("−1", 6, y(-1) + 4);
  const line = (key, color, dash) => {
    g.strokeStyle = color; g.setLineDash(dash); g.lineWidth = 2; g.beginPath();
    state.turns.forEach((t, i) => (i ? g.lineTo(x(i), y(t[key])) : g.moveTo(x(i), y(t[key])))); g.stroke(); g.setLineDash([]);
  };
  line("valence", "#444", []); line("arousal", "#bbb", [5, 4]);
  state.turns.forEach((t, i) => {
    g.fillStyle = COLORS[t.tag] || "#555"; g.beginPath(); g.arc(x(i), y(t.valence), 6, 0, 2 * Math.PI); g.fill();
    g.fillStyle = "#222"; g.textAlign = "center"; g.fillText(`${t.n}: ${t.tag}`, x(i), y(t.valence) - 10); g.textAlign = "left";
  });
  g.fillStyle = "#444"; g.fillText("— valence   - - arousal   (per user turn)", pad, H - 8);
  c.dataset.points = String(n);
}

function drawPlane() {
  const c = $("plane"), g = c.getContext("2d"), S = c.width, m = 20, p = (v) => m + (v + 1) / 2 * (S - 2 * m);
  g.clearRect(0, 0, S, S);
  g.strokeStyle = "#ddd"; g.beginPath(); g.moveTo(p(0), m); g.lineTo(p(0), S - m); g.moveTo(m, p(0)); g.lineTo(S - m, p(0)); g.stroke();
  g.fillStyle = "#888"; g.font = "10px sans-serif";
  g.fillText("valence →", S - 70, p(0) - 4); g.fillText("arousal ↑", p(0) + 4, m + 8);
  g.strokeStyle = "#999"; g.beginPath();
  state.turns.forEach((t, i) => (i ? g.lineTo(p(t.valence), p(-t.arousal)) : g.moveTo(p(t.valence), p(-t.arousal)))); g.stroke();
  state.turns.forEach((t) => { g.fillStyle = COLORS[t.tag] || "#555"; g.beginPath(); g.arc(p(t.valence), p(-t.arousal), 5, 0, 2 * Math.PI); g.fill(); });
}

function drawTable() {
  $("turns").querySelector("tbody").innerHTML = state.turns.map((t) =>
    `<tr><td>${t.n}</td><td><span class="chip" style="background:${COLORS[t.tag] || "#555"}">${t.tag}</span></td>` +
    `<td>${t.confidence.toFixed(2)}</td><td>${t.valence.toFixed(2)}</td><td>${t.arousal.toFixed(2)}</td>` +
    `<td>${t.firstAudio === undefined || t.firstAudio === null ? "" : t.firstAudio.toFixed(2) + " s"}</td></tr>`).join("");
}

$("mic").addEventListener("click", () => toggleMic().catch((err) => setStatus("microphone: " + err.message, false)));
$("upload").addEventListener("change", (e) => { if (e.target.files[0]) sendFile(e.target.files[0]).catch((err) => setStatus(err.message, false)); });
$("lang").addEventListener("change", (e) => send({ type: "session.update", session: { emoslm: { lang: e.target.value } } }));
$("show-think").addEventListener("change", (e) => document.querySelectorAll("details.think").forEach((d) => { d.hidden = !e.target.checked; }));
$("key").value = localStorage.getItem("emoslm-key") || "";
$("key").addEventListener("change", (e) => { localStorage.setItem("emoslm-key", e.target.value); if (state.ws) state.ws.close(); });
drawChart(); drawPlane();
