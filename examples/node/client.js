#!/usr/bin/env node
// A small cim client in Node.js: register, log in at a route, open the Chat
// stream to the chat server the route picked, send, receive, log out; and a
// group conversation: create a group, send to its members, page back through
// its history.
//
// Delivery: every message to a user carries the next seq of that user's
// sequence (1, 2, 3...). The client presents the last seq it holds at login,
// prints each seq once (a replay can repeat a live push), acks what it
// printed so the route trims it, and asks for a replay (SyncFrame) when a gap
// in the seqs lasts.
//
//   node client.js --route 127.0.0.1:7100 --user NAME --password PW \
//       [--send-to ID --text TEXT] [--create-group NAME [--members ID,...]]
//       [--group-id g:N] [--group TEXT] [--history [--page N]]
//       [--wait-for N] [--timeout S]
//
// Everything that happens is one JSON object per line on stdout; a failure is
// one "cim-node: error: ..." line on stderr and exit status 1.
//
// The protos are loaded at run time from ../../protos. They import each other
// as "cim/proto/v1/common.proto" (protoc runs with -Icim/proto=protos), so
// proto-loader gets proto-root/ as its include directory, where the committed
// symlink proto-root/cim/proto -> ../../../../protos makes those names resolve.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.join(__dirname, 'proto-root');
const PING_INTERVAL_MS = 10_000; // ping after this much silence (or the server's hint, if lower)
const RPC_TIMEOUT_MS = 5_000; // deadline of every unary call and of the stream login
const ACK_DELAY_MS = 200; // one cumulative ack for what was printed meanwhile
const GAP_WAIT_MS = 2_000; // a missing seq not filled by then: ask for a replay
const MAX_PAGE = 100; // Route.History's largest page

const USAGE = `usage: node client.js --route HOST:PORT --user NAME --password PW
                      [--send-to ID --text TEXT]
                      [--create-group NAME [--members ID,...]] [--group-id g:N]
                      [--group TEXT] [--history [--page N]]
                      [--wait-for N] [--timeout S]

  --route         route address (default 127.0.0.1:7100, or CIM_ROUTE)
  --user          user name (registered on first use)
  --password      password (or CIM_PASSWORD)
  --send-to       user id to send --text to privately
  --text          the private message's text
  --create-group  create a group with this name, owned by you
  --members       its first members besides you (user ids, comma-separated)
  --group-id      a group you are in (g:N)
  --group         text of a group message: to the members of the group
                  (--create-group or --group-id), else to everyone online but you
  --history       at the end, page back through the group's history
  --page          messages per history page (default 50, at most 100)
  --wait-for      exit after receiving this many messages (default 0: after sending)
  --timeout       give up after this many seconds (default 30)`;

// --- output ---------------------------------------------------------------

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

class CliError extends Error {}

// "MESSAGE_KIND_PRIVATE" -> "private", "DELIVERY_STATUS_STORED" -> "stored"
function shortEnum(value, prefix) {
  return typeof value === 'string' && value.startsWith(prefix)
    ? value.slice(prefix.length).toLowerCase()
    : value;
}

// int64 fields arrive as strings (longs: String); ids fit in a double.
function id(value) {
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : value;
}

function describeGrpcError(err) {
  const code = grpc.status[err.code] ?? err.code;
  return `${code}: ${err.details || err.message}`;
}

// --- arguments ------------------------------------------------------------

function parseCli(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        route: { type: 'string', default: process.env.CIM_ROUTE || '127.0.0.1:7100' },
        user: { type: 'string' },
        password: { type: 'string', default: process.env.CIM_PASSWORD },
        'send-to': { type: 'string' },
        text: { type: 'string' },
        group: { type: 'string' },
        'create-group': { type: 'string' },
        members: { type: 'string' },
        'group-id': { type: 'string' },
        history: { type: 'boolean', default: false },
        page: { type: 'string', default: '50' },
        'wait-for': { type: 'string', default: '0' },
        timeout: { type: 'string', default: '30' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new CliError(`${err.message}\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (!values.user) throw new CliError(`--user is required\n${USAGE}`);
  if (values.password === undefined) throw new CliError(`--password is required\n${USAGE}`);
  if ((values['send-to'] === undefined) !== (values.text === undefined)) {
    throw new CliError('--send-to and --text go together');
  }
  const sendTo = values['send-to'] === undefined ? null : values['send-to'];
  if (sendTo !== null && !/^[1-9][0-9]*$/.test(sendTo)) {
    throw new CliError(`--send-to must be a user id (a positive integer), not ${JSON.stringify(sendTo)}`);
  }
  const createGroup = values['create-group'] === undefined ? null : values['create-group'];
  const groupId = values['group-id'] === undefined ? null : values['group-id'];
  if (createGroup !== null && groupId !== null) {
    throw new CliError('--create-group and --group-id do not go together: the new group is the one');
  }
  if (values.members !== undefined && createGroup === null) {
    throw new CliError('--members goes with --create-group');
  }
  const members = values.members === undefined || values.members === '' ? [] : values.members.split(',');
  for (const member of members) {
    if (!/^[1-9][0-9]*$/.test(member)) {
      throw new CliError(`--members must be user ids (positive integers, comma-separated), not ${JSON.stringify(member)}`);
    }
  }
  if (groupId !== null && !/^g:[1-9][0-9]*$/.test(groupId)) {
    throw new CliError(`--group-id must be a group id (g:N), not ${JSON.stringify(groupId)}`);
  }
  if (values.history && createGroup === null && groupId === null) {
    throw new CliError('--history reads a group: give --create-group or --group-id');
  }
  const page = Number(values.page);
  if (!Number.isInteger(page) || page < 1 || page > MAX_PAGE) {
    throw new CliError(`--page must be an integer from 1 to ${MAX_PAGE}`);
  }
  const waitFor = Number(values['wait-for']);
  if (!Number.isInteger(waitFor) || waitFor < 0) throw new CliError('--wait-for must be an integer >= 0');
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) throw new CliError('--timeout must be a positive number of seconds');
  return {
    route: values.route,
    user: values.user,
    password: values.password,
    sendTo,
    text: values.text,
    group: values.group,
    createGroup,
    members,
    groupId,
    history: values.history,
    page,
    waitFor,
    timeoutMs: timeout * 1000,
  };
}

// --- protos ---------------------------------------------------------------

function loadProtos() {
  const definition = protoLoader.loadSync(
    ['cim/proto/v1/route.proto', 'cim/proto/v1/chat.proto', 'cim/proto/v1/groups.proto'],
    {
      includeDirs: [PROTO_ROOT],
      keepCase: true, // field names as in the .proto files: user_id, session_token, ...
      longs: String, // int64 / uint64 as decimal strings
      enums: String, // enum values by name
      defaults: true,
      oneofs: true, // sets e.g. frame: "login_ok" on every ServerFrame
    },
  );
  return grpc.loadPackageDefinition(definition).cim.v1;
}

// --- the client -----------------------------------------------------------

class NodeCimClient {
  constructor(proto, opts) {
    this.proto = proto;
    this.opts = opts;
    this.route = new proto.Route(opts.route, grpc.credentials.createInsecure());
    // Groups is served on the route's port, over the same connection.
    this.groups = new proto.Groups(opts.route, grpc.credentials.createInsecure(), {
      channelOverride: this.route.getChannel(),
    });
    this.groupId = opts.groupId; // the group this run sends to and reads (or creates)
    this.chat = null;
    this.call = null;
    this.token = '';
    this.userId = 0;
    this.closing = false;
    this.lastSent = 0;
    this.pingTimer = null;
    this.nextCorrelation = 1;
    this.pending = new Map(); // correlation id -> {resolve, reject}
    this.received = 0;
    this.sendsDone = false;
    this.loginWaiter = null;
    // Every seq up to lastSeq was printed (or is gone); `ahead` holds the
    // seqs printed past a gap. Seqs fit in a double (2^53 messages per user).
    this.lastSeq = 0;
    this.ahead = new Set();
    this.ackedSeq = 0;
    this.ackTimer = null;
    this.gapTimer = null;
    // Settled by the stream: resolves when the work is done, rejects on failure.
    this.finished = new Promise((resolve, reject) => {
      this.finish = resolve;
      this.fail = reject;
    });
  }

  unary(method, request, withToken = true, stub = this.route) {
    const metadata = new grpc.Metadata();
    if (withToken) metadata.set('authorization', `Bearer ${this.token}`);
    const deadline = new Date(Date.now() + RPC_TIMEOUT_MS);
    return new Promise((resolve, reject) => {
      stub[method](request, metadata, { deadline }, (err, reply) => {
        if (err) reject(new CliError(`${method} at ${this.opts.route} failed: ${describeGrpcError(err)}`));
        else resolve(reply);
      });
    });
  }

  async register() {
    const reply = await this.unary('Register', { user_name: this.opts.user, password: this.opts.password }, false);
    this.userId = reply.user_id;
    emit({ event: 'registered', user_id: id(reply.user_id), user_name: reply.user_name, created: reply.created });
  }

  async login() {
    const reply = await this.unary(
      'Login',
      { user_name: this.opts.user, password: this.opts.password, user_id: this.userId },
      false,
    );
    this.userId = reply.user_id;
    this.token = reply.session_token;
    if (!reply.server || !reply.server.address) throw new CliError('Login returned no chat server');
    return reply.server;
  }

  async logout() {
    if (!this.token) return; // never logged in
    // Acked at the route directly (a stream ack may still be on its way), so
    // the inbox is trimmed before the session ends: the next login replays none of it.
    if (this.lastSeq > 0) {
      await this.unary('AckMessages', { seq: String(this.lastSeq) }).catch((err) => {
        process.stderr.write(`cim-node: warning: ${err.message}\n`);
      });
    }
    try {
      await this.unary('Logout', {});
      emit({ event: 'logged_out' });
    } catch (err) {
      process.stderr.write(`cim-node: warning: ${err.message}\n`);
    } finally {
      this.token = '';
    }
  }

  // Opens the Chat stream and waits for LoginOk.
  connect(server) {
    this.chat = new this.proto.Chat(server.address, grpc.credentials.createInsecure());
    const call = this.chat.Connect();
    this.call = call;
    const loggedIn = new Promise((resolve, reject) => {
      this.loginWaiter = { resolve, reject };
    });
    const loginTimer = setTimeout(() => {
      this.loginFailed(new CliError(`no LoginOk from chat server ${server.address} within ${RPC_TIMEOUT_MS} ms`));
    }, RPC_TIMEOUT_MS);
    call.on('data', (frame) => this.onFrame(frame));
    call.on('error', (err) => {
      if (this.closing) return;
      const error = new CliError(`chat stream to ${server.address} failed: ${describeGrpcError(err)}`);
      this.loginFailed(error);
      this.streamFailed(error);
    });
    call.on('end', () => {
      if (this.closing) return;
      const error = new CliError(`chat server ${server.address} ended the stream`);
      this.loginFailed(error);
      this.streamFailed(error);
    });
    // The server replays every stored message after last_seq, then goes live.
    this.write({ login: { user_id: this.userId, session_token: this.token, last_seq: String(this.lastSeq) } });
    return loggedIn.finally(() => clearTimeout(loginTimer)).then((ok) => {
      const hint = Number(ok.heartbeat_interval_ms);
      const interval = hint > 0 ? Math.min(PING_INTERVAL_MS, hint) : PING_INTERVAL_MS;
      this.startKeepAlive(interval);
      emit({
        event: 'logged_in',
        user_id: id(ok.user_id),
        user_name: ok.user_name,
        server: ok.server_id,
        address: server.address,
      });
      return ok;
    });
  }

  loginFailed(error) {
    if (this.loginWaiter) {
      const { reject } = this.loginWaiter;
      this.loginWaiter = null;
      reject(error);
    }
  }

  streamFailed(error) {
    for (const { reject } of this.pending.values()) reject(error);
    this.pending.clear();
    this.fail(error);
  }

  write(frame) {
    this.lastSent = Date.now();
    this.call.write(frame);
  }

  startKeepAlive(interval) {
    // Checks often, pings only after `interval` ms without sending anything.
    this.pingTimer = setInterval(() => {
      if (this.closing || Date.now() - this.lastSent < interval) return;
      this.write({ ping: { client_time_ms: String(Date.now()) } });
      emit({ event: 'ping' });
    }, Math.min(1000, interval));
  }

  onFrame(frame) {
    switch (frame.frame) {
      case 'login_ok':
        if (this.loginWaiter) {
          const { resolve } = this.loginWaiter;
          this.loginWaiter = null;
          resolve(frame.login_ok);
        }
        break;
      case 'pong':
        break;
      case 'send_result': {
        const result = frame.send_result;
        const waiter = this.pending.get(String(result.correlation_id));
        if (!waiter) break;
        this.pending.delete(String(result.correlation_id));
        if (result.outcome === 'ok') waiter.resolve(result.ok);
        else {
          const code = grpc.status[result.error.code] ?? result.error.code;
          waiter.reject(new CliError(`message refused: ${code}: ${result.error.message}`));
        }
        break;
      }
      case 'message': {
        const m = frame.message;
        if (!this.takeSeq(Number(m.seq))) break; // printed already
        emit({
          event: 'message',
          sender_id: id(m.sender_id),
          sender_name: m.sender_name,
          text: m.text,
          kind: shortEnum(m.kind, 'MESSAGE_KIND_'),
          receiver_id: id(m.receiver_id),
          group_id: m.group_id,
          message_id: m.message_id,
          stored: m.stored,
          seq: Number(m.seq),
          conversation_id: m.conversation_id,
          position: Number(m.position),
        });
        this.received += 1;
        this.checkDone();
        break;
      }
      case 'replay_done': {
        const done = frame.replay_done;
        if (Number(done.head_seq) < this.lastSeq) {
          // The server's sequence restarted below ours (its store lost data):
          // follow it, or every new message would look like a duplicate.
          this.lastSeq = this.ackedSeq = Number(done.head_seq);
          this.ahead.clear();
        }
        // Every seq up to through_seq was sent before this frame, or is gone.
        this.advanceTo(Number(done.through_seq));
        break;
      }
      case 'notice': {
        const n = frame.notice;
        if (this.closing) break; // logging out: the server says so ("kicked")
        const kind = shortEnum(n.kind, 'KIND_');
        emit({ event: 'notice', kind, text: n.text, code: n.code });
        if (kind === 'behind') break; // messages were dropped before we got them: go on
        const error = new CliError(`chat server notice (${kind}): ${n.text}`);
        this.loginFailed(error); // a refused login arrives as a notice
        this.streamFailed(error); // kicked, draining or error: this simple client stops
        break;
      }
      default:
        break;
    }
  }

  // Records a message's seq; false for one printed already.
  takeSeq(seq) {
    if (!seq) return true; // outside any sequence (an older server)
    if (seq <= this.lastSeq || this.ahead.has(seq)) return false;
    this.ahead.add(seq);
    this.advanceTo(this.lastSeq);
    return true;
  }

  // Everything up to `seq` is printed or gone: moves lastSeq past it and
  // over the contiguous seqs printed after it; acks soon; watches gaps.
  advanceTo(seq) {
    this.lastSeq = Math.max(this.lastSeq, seq);
    for (const s of this.ahead) if (s <= this.lastSeq) this.ahead.delete(s);
    while (this.ahead.delete(this.lastSeq + 1)) this.lastSeq += 1;
    if (this.lastSeq > this.ackedSeq && !this.ackTimer) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = null;
        if (this.closing || this.lastSeq <= this.ackedSeq) return;
        this.ackedSeq = this.lastSeq;
        this.write({ ack: { seq: String(this.lastSeq) } });
      }, ACK_DELAY_MS);
    }
    if (this.ahead.size === 0) {
      clearTimeout(this.gapTimer);
      this.gapTimer = null;
    } else if (!this.gapTimer) {
      this.gapTimer = setTimeout(() => {
        this.gapTimer = null;
        // Still missing: the replay resends them (and the rest, dropped above).
        if (!this.closing && this.ahead.size > 0) this.write({ sync: { after_seq: String(this.lastSeq) } });
      }, GAP_WAIT_MS);
    }
  }

  send(target) {
    const correlationId = String(this.nextCorrelation++);
    return new Promise((resolve, reject) => {
      this.pending.set(correlationId, { resolve, reject });
      this.write({ send: { correlation_id: correlationId, ...target } });
    });
  }

  async sendAll() {
    const sends = [];
    if (this.opts.sendTo !== null) {
      sends.push({ private: { receiver_id: this.opts.sendTo, text: this.opts.text } });
    }
    if (this.opts.group !== undefined) {
      // No group id: CIM's broadcast, to everyone online.
      sends.push({ group: { text: this.opts.group, ...(this.groupId ? { group_id: this.groupId } : {}) } });
    }
    for (const target of sends) {
      const ok = await this.send(target);
      emit({
        event: 'sent',
        message_id: ok.message_id,
        status: shortEnum(ok.status, 'DELIVERY_STATUS_'),
        recipients: ok.recipients,
        kind: target.private ? 'private' : 'group',
        ...(target.group ? { group_id: target.group.group_id || 'all' } : {}),
      });
    }
    this.sendsDone = true;
    this.checkDone();
  }

  checkDone() {
    if (this.sendsDone && this.received >= this.opts.waitFor) this.finish();
  }

  // Groups.CreateGroup: the caller owns it. Its "created" event is pushed to
  // every member, this user included (a "message" of kind "membership").
  async createGroup() {
    const reply = await this.unary(
      'CreateGroup',
      { name: this.opts.createGroup, member_ids: this.opts.members },
      true,
      this.groups,
    );
    this.groupId = reply.group.group_id;
    emit({
      event: 'group_created',
      group_id: reply.group.group_id,
      name: reply.group.name,
      member_count: reply.group.member_count,
      position: Number(reply.event.position),
    });
  }

  // Route.History, newest first, a page at a time back to the oldest kept:
  // one "history" line per message, then "history_end".
  async readHistory() {
    const conversationId = this.groupId;
    let before = '0';
    let pages = 0;
    let reply;
    for (;;) {
      reply = await this.unary('History', {
        conversation_id: conversationId,
        before_position: before,
        limit: this.opts.page,
      });
      pages += 1;
      for (const m of reply.messages) {
        emit({
          event: 'history',
          conversation_id: m.conversation_id,
          position: Number(m.position),
          kind: shortEnum(m.kind, 'MESSAGE_KIND_'),
          sender_id: id(m.sender_id),
          sender_name: m.sender_name,
          text: m.text,
          message_id: m.message_id,
        });
      }
      if (!reply.more || reply.messages.length === 0) break;
      before = reply.messages[reply.messages.length - 1].position; // the oldest so far
    }
    emit({
      event: 'history_end',
      conversation_id: conversationId,
      pages,
      head_position: Number(reply.head_position),
      dropped_through_position: Number(reply.dropped_through_position),
    });
  }

  async run() {
    await this.register();
    const server = await this.login();
    await this.connect(server);
    if (this.opts.createGroup !== null) await this.createGroup();
    // A stream failure while sending rejects both; whichever comes first wins.
    await Promise.race([this.sendAll(), this.finished]);
    await this.finished;
    if (this.opts.history) await this.readHistory();
  }

  // Logs out at the route, then closes the stream and the channels.
  async close() {
    if (this.closing) return;
    this.closing = true;
    clearInterval(this.pingTimer);
    clearTimeout(this.ackTimer);
    clearTimeout(this.gapTimer);
    await this.logout();
    if (this.call) {
      this.call.end();
      this.call.cancel();
    }
    if (this.chat) this.chat.close();
    this.route.close();
  }
}

// --- main -----------------------------------------------------------------

async function main() {
  let opts;
  try {
    opts = parseCli(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`cim-node: error: ${err.message}\n`);
    return 1;
  }
  const client = new NodeCimClient(loadProtos(), opts);
  client.finished.catch(() => {}); // handled through run()

  let timer;
  const timedOut = new Promise((_, reject) => {
    timer = setTimeout(() => {
      const wanted = opts.waitFor > 0 ? `, received ${client.received} of ${opts.waitFor} messages` : '';
      reject(new CliError(`timed out after ${opts.timeoutMs / 1000} s${wanted}`));
    }, opts.timeoutMs);
  });
  const interrupted = new Promise((_, reject) => {
    const stop = (signal) => reject(new CliError(`interrupted by ${signal}`));
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });

  let code = 0;
  try {
    await Promise.race([client.run(), timedOut, interrupted]);
  } catch (err) {
    const message = err instanceof CliError ? err.message : err.stack || String(err);
    process.stderr.write(`cim-node: error: ${message}\n`);
    code = 1;
  } finally {
    clearTimeout(timer);
  }
  await client.close();
  return code;
}

main().then((code) => {
  process.exitCode = code;
  // Everything is closed, so Node exits once stdout is flushed; this is only a
  // backstop in case a handle lingers.
  setTimeout(() => process.exit(code), 2000).unref();
  process.removeAllListeners('SIGINT');
  process.removeAllListeners('SIGTERM');
});
